//! NetworkPolicy from the Kubernetes API enforced by Margay's programs on
//! the local cluster (two nodes): the well-known recipes, peers by pod,
//! namespace, both, and address block with exceptions, named ports, the
//! union of several policies, a pod and a namespace relabelled into and
//! out of a selector, the kubelet's probes always let through; a new pod
//! isolated from its first packet; a connection kept across changes that
//! still allow it.

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
    readinessProbe: {{tcpSocket: {{port: {PORT}}}, periodSeconds: 1, failureThreshold: 2}}
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

/// Whether pod `namespace/name` is Ready.
fn ready(c: &KubeCluster, namespace: &str, name: &str) -> bool {
    let p = c.kubectl_json(&["get", "pod", "-n", namespace, name]);
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|cond| cond["type"] == "Ready" && cond["status"] == "True")
}

/// Whether a UDP datagram from pod `from` to port 53 of `ip` (where
/// nothing listens) is answered: the port-unreachable error comes back at
/// once, where a dropped datagram leaves the client to time out.
fn udp_answered(c: &KubeCluster, from: (&str, &str), ip: &str) -> bool {
    let out = c.try_kubectl(&[
        "exec", "-n", from.0, from.1, "--", "timeout", "3", "nslookup", "x", ip,
    ]);
    out.stdout.contains("refused") || out.stderr.contains("refused")
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
    c.apply(&namespace("infra", "team: c"));
    c.apply(&pod("infra", "resolver", "app: resolver", &n0));
    let web = pod_ip(&c, "shop", "web");
    let dns_ip = pod_ip(&c, "infra", "resolver");
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
    assert!(
        udp_answered(&c, ops_client, &dns_ip),
        "UDP passes without policy"
    );
    expect(
        &c,
        "deny all",
        &[
            (shop_client, &web, PORT, false),
            (ops_client, &web, PORT, false),
            (("shop", "web"), &ops_ip, PORT, true),
        ],
    );
    // The kubelet's probes come from the node: never denied.
    std::thread::sleep(Duration::from_secs(4));
    assert!(ready(&c, "shop", "web"), "web's readiness probe passes");

    // Allow all ingress: the union with deny-all allows everything.
    c.apply(&policy(
        "shop",
        "allow-all",
        "  podSelector: {}\n  ingress: [{}]",
    ));
    expect(
        &c,
        "allow all",
        &[
            (shop_client, &web, PORT, true),
            (ops_client, &web, admin, true),
        ],
    );
    c.kubectl(&["delete", "networkpolicy", "-n", "shop", "allow-all"]);

    // Allow from a namespace by its labels.
    c.apply(&policy(
        "shop",
        "web-from-team-b",
        "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: b}}}]",
    ));
    expect(
        &c,
        "allow from namespaces of team b",
        &[
            (ops_client, &web, PORT, true),
            (shop_client, &web, PORT, false),
        ],
    );
    // The namespace relabelled out of the selector, then back.
    c.kubectl(&["label", "namespace", "ops", "team=x", "--overwrite"]);
    expect(
        &c,
        "ops relabelled out of team b",
        &[(ops_client, &web, PORT, false)],
    );
    c.kubectl(&["label", "namespace", "ops", "team=b", "--overwrite"]);
    expect(&c, "ops back in team b", &[(ops_client, &web, PORT, true)]);
    c.kubectl(&["delete", "networkpolicy", "-n", "shop", "web-from-team-b"]);

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

    // Deny all egress of web: it no longer reaches out.
    c.apply(&policy(
        "shop",
        "web-no-egress",
        "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]",
    ));
    expect(
        &c,
        "web's egress denied",
        &[(("shop", "web"), &ops_ip, PORT, false)],
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
    assert!(
        udp_answered(&c, ops_client, &dns_ip),
        "UDP to port 53 still passes"
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

/// A pod that policy isolates is isolated from its first packet: its
/// containers start only once the agent has put its policy in force, not
/// when the kubelet reports its address. An ADD naming a pod the API does
/// not have is refused (code 11, the pod named) and leaves nothing behind.
/// A connection that changes keep allowed is not cut by them.
#[test]
fn policy_holds_from_a_pods_first_packet_and_across_changes() {
    require_root!(policy_holds_from_a_pods_first_packet_and_across_changes);
    let c = KubeCluster::up("np-first", &["--nodes", "2"]);
    let (n0, n1) = (c.node_name(0).to_string(), c.node_name(1).to_string());
    c.apply(&namespace("open", "team: a"));
    c.apply(&namespace("shut", "team: b"));
    c.apply(&pod("open", "web", "app: web", &n1));
    let web = pod_ip(&c, "open", "web");

    // Egress of every pod of `shut` denied before its pods exist; the
    // pod tries its first connection the moment it starts.
    c.apply(&policy(
        "shut",
        "no-egress",
        "  podSelector: {}\n  policyTypes: [Egress]",
    ));
    std::thread::sleep(Duration::from_secs(1));
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{namespace: shut, name: early}}
spec:
  nodeName: {n0}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "if nc -w 1 {web} {PORT} </dev/null; then echo FIRST-OPEN; else echo FIRST-SHUT; fi; exec sleep 3600"]
"#
    ));
    let first = wait_for("early's first attempt", Duration::from_secs(120), || {
        let log = c.try_kubectl(&["logs", "-n", "shut", "early"]);
        if log.stdout.contains("FIRST-") {
            Ok(log.stdout)
        } else {
            Err(log.stderr)
        }
    });
    assert!(
        first.contains("FIRST-SHUT"),
        "the first connection of a pod denied egress must fail: {first}"
    );

    // A pod the API never had: refused, nothing left behind.
    let veths = |c: &KubeCluster| {
        let links = c.on_node_ok(0, &["ip", "-o", "link", "show", "type", "veth"]);
        links.lines().count()
    };
    let veths_before = veths(&c);
    let add = "set -e; ip netns add ghost; \
         jq '.plugins[0] + {name: .name, cniVersion: .cniVersion}' /etc/cni/net.d/10-margay.conflist | \
         CNI_COMMAND=ADD CNI_CONTAINERID=ghost CNI_NETNS=/run/netns/ghost CNI_IFNAME=eth0 \
         CNI_ARGS='K8S_POD_NAMESPACE=shut;K8S_POD_NAME=ghost' CNI_PATH=/opt/cni/bin /opt/cni/bin/margay";
    let out = c.on_node(0, &["bash", "-c", add]);
    let _ = c.on_node(0, &["ip", "netns", "del", "ghost"]);
    assert!(!out.success, "ADD of a pod the API does not have succeeded");
    let error: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(error["code"], 11, "{error}");
    assert!(
        error["msg"].as_str().unwrap_or("").contains("shut/ghost"),
        "{error}"
    );
    let allocations = c.on_node_ok(0, &["/opt/cni/bin/margay-ipam", "allocations"]);
    assert!(
        !allocations.contains("ghost"),
        "the refused ADD's address was released: {allocations}"
    );
    assert_eq!(veths(&c), veths_before, "the refused ADD's veth is gone");

    // A long-lived connection from a client to a listener that counts to
    // it (busybox's nc sends only the first line of a pipe, so the count
    // flows back from the listener, in the client's log).
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{namespace: open, name: listener, labels: {{app: listener}}}}
spec:
  nodeName: {n1}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "printf '#!/bin/sh\\ni=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done\\n' >/tick && chmod +x /tick && exec nc -l -p 9000 -e /tick"]
"#
    ));
    let listener = pod_ip(&c, "open", "listener");
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{namespace: open, name: talker, labels: {{app: client}}}}
spec:
  nodeName: {n0}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/busybox:latest
    imagePullPolicy: Never
    command: ["nc", "{listener}", "9000"]
"#
    ));
    let count = || -> u64 {
        c.try_kubectl(&["logs", "-n", "open", "talker"])
            .stdout
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .max()
            .unwrap_or(0)
    };
    wait_for("the connection open", Duration::from_secs(120), || {
        if count() > 5 {
            Ok(())
        } else {
            Err("no lines yet".to_string())
        }
    });
    // Changes that keep it allowed: the listener isolated but for
    // clients on 9000, then an unrelated policy elsewhere.
    c.apply(&policy(
        "open",
        "listener-from-clients",
        "  podSelector: {matchLabels: {app: listener}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 9000}]",
    ));
    c.apply(&policy(
        "shut",
        "unrelated",
        "  podSelector: {matchLabels: {app: nobody}}\n  policyTypes: [Ingress]",
    ));
    let before = count();
    std::thread::sleep(Duration::from_secs(4));
    let after = count();
    assert!(
        after >= before + 10,
        "the allowed connection kept flowing across the changes: {before} → {after}"
    );
}
