//! NetworkPolicy from the Kubernetes API enforced by Margay's programs on
//! the local cluster (two nodes): the well-known recipes, peers by pod,
//! namespace, both, and address block with exceptions, named ports, the
//! union of several policies, a pod relabelled into and out of a selector.

use std::time::Duration;

use margay_tests::kube::{KubeCluster, wait_for};
use margay_tests::require_root;
use margay_tests::workload::PORT;

/// How long a policy change may take to show (the agent applies within
/// milliseconds; kubectl and the API take the rest).
const CHANGE_WAIT: Duration = Duration::from_secs(30);

/// A pod serving the address-echo CGI on [`PORT`] (container port named
/// `http`) and on `PORT + 1` (named `admin`), in `namespace` with
/// `labels`, on node `node`.
fn pod(namespace: &str, name: &str, labels: &str, node: &str) -> String {
    let admin = PORT + 1;
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{namespace: {namespace}, name: {name}, labels: {{{labels}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: localhost/busybox:latest
    imagePullPolicy: Never
    ports: [{{name: http, containerPort: {PORT}}}, {{name: admin, containerPort: {admin}}}]
    command: ["sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho\\necho $REMOTE_ADDR\\n' >/www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && httpd -p {admin} -h /www && exec httpd -f -p {PORT} -h /www"]
"#
    )
}

fn namespace(name: &str, labels: &str) -> String {
    format!("\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n")
}

fn policy(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: {namespace}, name: {name}}}\nspec:\n{spec}\n"
    )
}

/// The address of pod `namespace/name` once it runs.
fn pod_ip(c: &KubeCluster, namespace: &str, name: &str) -> String {
    wait_for(
        &format!("{namespace}/{name} running"),
        Duration::from_secs(120),
        || {
            let p = c.kubectl_json(&["get", "pod", "-n", namespace, name]);
            match (p["status"]["phase"].as_str(), p["status"]["podIP"].as_str()) {
                (Some("Running"), Some(ip)) => Ok(ip.to_string()),
                _ => Err(p["status"].to_string()),
            }
        },
    )
}

/// Whether a new TCP connection from pod `from` (namespace/name) to
/// `ip:port` gets an answer.
fn reaches(c: &KubeCluster, from: (&str, &str), ip: &str, port: u16) -> bool {
    let request =
        format!("printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port} | tail -n 1");
    let out = c.try_kubectl(&["exec", "-n", from.0, from.1, "--", "sh", "-c", &request]);
    out.success && !out.stdout.trim().is_empty()
}

/// Waits until every case (from, to address, port, expected) holds.
fn expect(c: &KubeCluster, what: &str, cases: &[((&str, &str), &str, u16, bool)]) {
    wait_for(what, CHANGE_WAIT, || {
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(from, ip, port, want)| reaches(c, *from, ip, *port) != *want)
            .map(|(from, ip, port, want)| {
                format!(
                    "{}/{} → {ip}:{port} should {}",
                    from.0,
                    from.1,
                    if *want { "pass" } else { "fail" }
                )
            })
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    });
}

#[test]
fn network_policy_recipes_are_enforced() {
    require_root!(network_policy_recipes_are_enforced);
    let c = KubeCluster::up("np-recipes", &["--nodes", "2"]);
    let (n0, n1) = (c.node_name(0).to_string(), c.node_name(1).to_string());
    c.apply(&namespace("shop", "team: a"));
    c.apply(&namespace("ops", "team: b"));
    c.apply(&pod("shop", "web", "app: web", &n0));
    c.apply(&pod("shop", "client", "app: client", &n1));
    c.apply(&pod("shop", "other", "app: other", &n0));
    c.apply(&pod("ops", "client", "app: client", &n1));
    let web = pod_ip(&c, "shop", "web");
    for (ns, name) in [("shop", "client"), ("shop", "other"), ("ops", "client")] {
        pod_ip(&c, ns, name);
    }
    let (shop_client, shop_other, ops_client) =
        (("shop", "client"), ("shop", "other"), ("ops", "client"));
    let admin = PORT + 1;
    expect(
        &c,
        "no policy: all pass",
        &[
            (shop_client, &web, PORT, true),
            (shop_other, &web, PORT, true),
            (ops_client, &web, PORT, true),
        ],
    );

    // Deny all ingress in shop: nothing reaches web; web still reaches out.
    c.apply(&policy(
        "shop",
        "deny-all",
        "  podSelector: {}\n  policyTypes: [Ingress]",
    ));
    let ops_ip = pod_ip(&c, "ops", "client");
    expect(
        &c,
        "deny all",
        &[
            (shop_client, &web, PORT, false),
            (ops_client, &web, PORT, false),
            (("shop", "web"), &ops_ip, PORT, true),
        ],
    );

    // Allow from app=client of the same namespace, on the named port http.
    c.apply(&policy(
        "shop",
        "web-from-clients",
        "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: http}]",
    ));
    expect(
        &c,
        "allow from clients of shop on http",
        &[
            (shop_client, &web, PORT, true),
            (shop_client, &web, admin, false),
            (shop_other, &web, PORT, false),
            (ops_client, &web, PORT, false),
        ],
    );

    // A second policy: from namespaces labelled team=b AND pods app=client
    // (one peer), on a port range: the union of both.
    c.apply(&policy(
        "shop",
        "web-from-ops",
        &format!("  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{team: b}}}}, podSelector: {{matchLabels: {{app: client}}}}}}]\n    ports: [{{port: {PORT}, endPort: {admin}}}]"),
    ));
    expect(
        &c,
        "the union of two policies",
        &[
            (shop_client, &web, PORT, true),
            (ops_client, &web, PORT, true),
            (ops_client, &web, admin, true),
            (shop_other, &web, PORT, false),
        ],
    );

    // Relabelled into the selector, then out again.
    c.kubectl(&[
        "label",
        "pod",
        "-n",
        "shop",
        "other",
        "app=client",
        "--overwrite",
    ]);
    expect(&c, "relabelled in", &[(shop_other, &web, PORT, true)]);
    c.kubectl(&[
        "label",
        "pod",
        "-n",
        "shop",
        "other",
        "app=other",
        "--overwrite",
    ]);
    expect(&c, "relabelled out", &[(shop_other, &web, PORT, false)]);

    // An address block with an exception: every pod but shop/client.
    let client_ip = pod_ip(&c, "shop", "client");
    c.kubectl(&[
        "delete",
        "networkpolicy",
        "-n",
        "shop",
        "web-from-clients",
        "web-from-ops",
    ]);
    c.apply(&policy(
        "shop",
        "web-from-block",
        &format!("  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [{client_ip}/32]}}}}]"),
    ));
    expect(
        &c,
        "an address block less its exception",
        &[
            (shop_client, &web, PORT, false),
            (shop_other, &web, PORT, true),
            (ops_client, &web, PORT, true),
        ],
    );

    // Egress: ops/client may send only UDP 53 (DNS-like) anywhere.
    c.apply(&policy(
        "ops",
        "dns-only",
        "  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: 53, protocol: UDP}]",
    ));
    expect(
        &c,
        "egress limited to UDP 53",
        &[(ops_client, &web, PORT, false)],
    );

    // All policies gone: all pass again.
    c.kubectl(&["delete", "networkpolicy", "-n", "shop", "--all"]);
    c.kubectl(&["delete", "networkpolicy", "-n", "ops", "--all"]);
    expect(
        &c,
        "no policy again",
        &[
            (shop_client, &web, PORT, true),
            (shop_other, &web, PORT, true),
            (ops_client, &web, PORT, true),
        ],
    );
}
