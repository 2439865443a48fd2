//! Services from the Kubernetes API balanced by Margay's programs, with no
//! kube-proxy on the local cluster: ClusterIP, NodePort (tunnel and DSR,
//! over IPv4 and IPv6),
//! LoadBalancer ingress and external IPs, the traffic policies and their
//! health check node port, affinity, and no failed request while backends
//! roll or the agent restarts.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use margay_tests::kube::{KubeCluster, Stopped, repo_root, sample, wait_for};
use margay_tests::netns::{run_ok, unique_name};
use margay_tests::process::run_bounded;
use margay_tests::require_root;
use margay_tests::traffic::{UdpServer, udp_request};
use margay_tests::workload::{
    POD_WAIT, PORT, Pod, RequestLoop, Who, http_get, http_get_status, pod_netns, running_pods, web,
    web_across_nodes, web_on_node, web_rolled_safely, who_from_outside, who_from_pod,
};

/// Requests per client: with three backends, the chance that hashing
/// misses one in 30 new connections is 3 × (2/3)^30 ≈ 2e-5.
const SPREAD: usize = 30;

/// A Service of the `web` pods (port 80 → [`PORT`]) from a YAML fragment of
/// extra spec lines.
fn service(name: &str, app: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 80, targetPort: {PORT}}}]{extra}
"#
    )
}

struct Frontends {
    cluster_ip: Ipv4Addr,
    node_port: Option<u16>,
    health_check_node_port: Option<u16>,
}

fn frontends(c: &KubeCluster, name: &str) -> Frontends {
    let svc = c.kubectl_json(&["get", "service", name]);
    let port = |v: &serde_json::Value| v.as_u64().map(|p| p as u16);
    Frontends {
        cluster_ip: svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap(),
        node_port: port(&svc["spec"]["ports"][0]["nodePort"]),
        health_check_node_port: port(&svc["spec"]["healthCheckNodePort"]),
    }
}

/// Waits until every one of `count` answers arrives (the agent programs a
/// Service shortly after the API has it), then returns them.
fn all_answer(what: &str, ask: impl Fn() -> Vec<Who>) -> Vec<(String, String)> {
    wait_for(what, POD_WAIT, || {
        let answers = ask();
        if !answers.is_empty() && answers.iter().all(Option::is_some) {
            Ok(answers.into_iter().flatten().collect::<Vec<_>>())
        } else {
            Err(format!("{answers:?}"))
        }
    })
}

fn pods_of(answers: &[(String, String)]) -> BTreeSet<String> {
    answers.iter().map(|(pod, _)| pod.clone()).collect()
}

fn seen_of(answers: &[(String, String)]) -> BTreeSet<String> {
    answers.iter().map(|(_, seen)| seen.clone()).collect()
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter().map(|p| p.name.clone()).collect()
}

/// Every client pod, one on each node, reaches backends on every node
/// through the ClusterIP, and each backend sees the client pod's own
/// address; the external client reaches every backend through each node's
/// NodePort, over IPv4 and IPv6 (the cluster is dual-stack, the Service
/// too), and the backends see the external client's own address of that
/// family.
fn cluster_ip_and_node_ports(tag: &str, nodes: usize, mode: &str) {
    let n = nodes.to_string();
    let c = KubeCluster::up(
        tag,
        &[
            "--nodes",
            &n,
            "--external-service-mode",
            mode,
            "--dual-stack",
        ],
    );
    c.apply(&web_across_nodes("web", nodes as u32));
    c.apply(&web_across_nodes("cli", nodes as u32));
    c.apply(&service(
        "web",
        "web",
        "\n  type: NodePort\n  ipFamilyPolicy: RequireDualStack",
    ));
    let backends = running_pods(&c, "web", nodes);
    let clients = running_pods(&c, "cli", nodes);
    let f = frontends(&c, "web");
    for client in &clients {
        let answers = all_answer(&format!("the ClusterIP from {}", client.node), || {
            who_from_pod(&c, client, SocketAddrV4::new(f.cluster_ip, 80), SPREAD)
        });
        assert_eq!(
            seen_of(&answers),
            BTreeSet::from([client.ip.to_string()]),
            "the backends see the client pod on {}",
            client.node
        );
        assert_eq!(
            pods_of(&answers),
            names(&backends),
            "{}'s connections reach the backends on every node",
            client.node
        );
    }
    let node_port = f.node_port.expect("a NodePort Service has a node port");
    for i in 0..nodes {
        for (node_ip, client_ip) in [
            (format!("NODE_IP_{i}"), "EXTERNAL_IP"),
            (format!("NODE_IP6_{i}"), "EXTERNAL_IP6"),
        ] {
            let node_ip: IpAddr = c.env(&node_ip).parse().unwrap();
            let answers = all_answer(
                &format!("node {i}'s NodePort on {node_ip} from outside ({mode})"),
                || who_from_outside(&c, SocketAddr::new(node_ip, node_port), SPREAD),
            );
            assert_eq!(
                seen_of(&answers),
                BTreeSet::from([c.env(client_ip).to_string()]),
                "through {node_ip} ({mode}), the backends see the external client's own address"
            );
            assert_eq!(pods_of(&answers), names(&backends), "through {node_ip}");
        }
    }
}

#[test]
fn cluster_ips_and_node_ports_reach_every_node_keeping_client_addresses() {
    require_root!(cluster_ips_and_node_ports_reach_every_node_keeping_client_addresses);
    cluster_ip_and_node_ports("ksvc", 3, "tunnel");
}

#[test]
fn node_ports_in_dsr_mode_keep_the_external_clients_address() {
    require_root!(node_ports_in_dsr_mode_keep_the_external_clients_address);
    cluster_ip_and_node_ports("ksdsr", 2, "dsr");
}

/// Routes the external client's traffic for `addr` through node `i` (as an
/// upstream router or a load balancer would).
fn route_from_outside(c: &KubeCluster, addr: Ipv4Addr, i: usize) {
    run_ok(Command::new("ip").args([
        "-n",
        c.env("EXTERNAL_NETNS"),
        "route",
        "replace",
        &format!("{addr}/32"),
        "via",
        c.env(&format!("NODE_IP_{i}")),
    ]));
}

/// externalIPs and a LoadBalancer's ingress IP answer the external client
/// like NodePorts; `externalTrafficPolicy: Local` serves only through a
/// node with a backend, whose health check node port says 200 where the
/// other node's says 503; `internalTrafficPolicy: Local` gives a client
/// only its own node's backends.
#[test]
fn external_ips_load_balancers_and_local_traffic_policies() {
    require_root!(external_ips_load_balancers_and_local_traffic_policies);
    let c = KubeCluster::up("kslb", &["--nodes", "2"]);
    let (node0, node1) = (c.node_name(0).to_string(), c.node_name(1).to_string());
    c.apply(&web_on_node("web", 1, &node0));
    c.apply(&web_across_nodes("cli", 2));
    let external = Ipv4Addr::new(203, 0, 113, 20);
    let ingress = Ipv4Addr::new(203, 0, 113, 10);
    c.apply(&service(
        "ext",
        "web",
        &format!("\n  externalIPs: [{external}]"),
    ));
    c.apply(&service(
        "lb",
        "web",
        "\n  type: LoadBalancer\n  externalTrafficPolicy: Local",
    ));
    c.kubectl(&[
        "patch",
        "service",
        "lb",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{ingress}"}}]}}}}}}"#),
    ]);
    c.apply(&service("near", "web", "\n  internalTrafficPolicy: Local"));
    let backend = running_pods(&c, "web", 1).remove(0);
    let clients = running_pods(&c, "cli", 2);
    let outside = c.env("EXTERNAL_IP").to_string();

    // The external IP (cluster policy) answers through either node.
    for i in 0..2 {
        route_from_outside(&c, external, i);
        let answers = all_answer(&format!("the external IP through node {i}"), || {
            who_from_outside(&c, SocketAddrV4::new(external, 80), 3)
        });
        assert_eq!(seen_of(&answers), BTreeSet::from([outside.clone()]));
    }

    // The ingress IP (local policy) answers through the backend's node only.
    route_from_outside(&c, ingress, 0);
    let answers = all_answer("the ingress IP through the backend's node", || {
        who_from_outside(&c, SocketAddrV4::new(ingress, 80), 3)
    });
    assert_eq!(pods_of(&answers), BTreeSet::from([backend.name.clone()]));
    assert_eq!(seen_of(&answers), BTreeSet::from([outside.clone()]));
    route_from_outside(&c, ingress, 1);
    assert!(
        who_from_outside(&c, SocketAddrV4::new(ingress, 80), 3)
            .iter()
            .all(Option::is_none),
        "through {node1}, which has no backend, externalTrafficPolicy: Local serves nothing"
    );
    let lb = frontends(&c, "lb");
    let health = lb
        .health_check_node_port
        .expect("a Local LoadBalancer has a health check node port");
    for (i, status, count) in [(0, "200", 1), (1, "503", 0)] {
        let addr = format!("{}:{health}", c.env(&format!("NODE_IP_{i}")));
        let (got, body) = wait_for(
            &format!("node {i}'s health check node port"),
            POD_WAIT,
            || http_get_status(&c, i, &addr, "/"),
        );
        assert!(got.contains(status), "node {i}: {got}\n{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["localEndpoints"], count, "node {i}: {body}");
        assert_eq!(body["service"]["name"], "lb");
    }

    // internalTrafficPolicy: Local: the client beside the backend reaches
    // it, the other one nothing.
    let near = frontends(&c, "near").cluster_ip;
    for client in &clients {
        let to = SocketAddrV4::new(near, 80);
        if client.node == node0 {
            let answers = all_answer("the local ClusterIP beside its backend", || {
                who_from_pod(&c, client, to, 3)
            });
            assert_eq!(seen_of(&answers), BTreeSet::from([client.ip.to_string()]));
        } else {
            assert!(
                who_from_pod(&c, client, to, 3).iter().all(Option::is_none),
                "internalTrafficPolicy: Local on {node1}, which has no backend"
            );
        }
    }
}

/// ClientIP affinity keeps a client on one backend across connections,
/// until the Service drops it.
#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    require_root!(client_ip_affinity_keeps_a_client_on_one_backend);
    let c = KubeCluster::up("ksaff", &["--nodes", "2"]);
    c.apply(&web_across_nodes("web", 2));
    c.apply(&web("cli", 1));
    c.apply(&service(
        "sticky",
        "web",
        "\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}",
    ));
    running_pods(&c, "web", 2);
    let client = running_pods(&c, "cli", 1).remove(0);
    let to = SocketAddrV4::new(frontends(&c, "sticky").cluster_ip, 80);
    let answers = all_answer("the sticky ClusterIP", || who_from_pod(&c, &client, to, 20));
    assert_eq!(
        pods_of(&answers).len(),
        1,
        "20 connections of one client, one backend: {answers:?}"
    );
    c.kubectl(&[
        "patch",
        "service",
        "sticky",
        "--type=merge",
        "-p",
        r#"{"spec":{"sessionAffinity":"None"}}"#,
    ]);
    let answers = wait_for("connections spread once affinity is off", POD_WAIT, || {
        let answers: Vec<(String, String)> = who_from_pod(&c, &client, to, SPREAD)
            .into_iter()
            .flatten()
            .collect();
        if pods_of(&answers).len() == 2 {
            Ok(answers)
        } else {
            Err(format!("{answers:?}"))
        }
    });
    assert_eq!(pods_of(&answers).len(), 2);
}

/// A client requesting every tenth of a second sees no failure while the
/// backends roll (a readiness probe, one at a time), while they scale down
/// and up, and while every node's agent is killed and comes back.
#[test]
fn rollouts_and_agent_restarts_fail_no_request() {
    require_root!(rollouts_and_agent_restarts_fail_no_request);
    let c = KubeCluster::up("ksroll", &["--nodes", "2"]);
    c.apply(&web_rolled_safely("web", 2));
    c.apply(&service("web", "web", ""));
    running_pods(&c, "web", 2);
    let to = SocketAddrV4::new(frontends(&c, "web").cluster_ip, 80);
    let looping = RequestLoop::start(&c, "loop", c.node_name(0), to);

    c.kubectl(&["rollout", "restart", "deployment/web"]);
    c.kubectl(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    c.kubectl(&["scale", "deployment/web", "--replicas=3"]);
    c.kubectl(&["rollout", "status", "deployment/web", "--timeout=180s"]);
    for i in 0..2 {
        c.kill_margay_container(i, "margay-agent");
    }
    for i in 0..2 {
        let addr = format!("{}:9091", c.env(&format!("NODE_IP_{i}")));
        wait_for(&format!("node {i}'s agent ready again"), POD_WAIT, || {
            margay_tests::workload::http_get(&c, i, &addr, "/readyz")
        });
    }
    std::thread::sleep(Duration::from_secs(2));

    let answers = looping.since_first_answer();
    let failed = answers.iter().filter(|a| a.is_none()).count();
    assert!(
        answers.len() >= 50,
        "the loop ran: {} requests",
        answers.len()
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the rollout, the scaling and the agent restarts",
        answers.len()
    );
    let pods: BTreeSet<String> = answers.into_iter().flatten().map(|(p, _)| p).collect();
    assert!(
        pods.len() >= 4,
        "the requests followed the rollout: {pods:?}"
    );
}

/// A thousand Services created through the API all answer.
#[test]
fn a_thousand_services_from_the_api_all_answer() {
    require_root!(a_thousand_services_from_the_api_all_answer);
    const COUNT: usize = 1000;
    let c = KubeCluster::up("ks1k", &["--nodes", "1"]);
    c.apply(&web("web", 1));
    c.apply(&web("cli", 1));
    let all: String = (0..COUNT)
        .map(|i| service(&format!("s{i}"), "web", "") + "---\n")
        .collect();
    c.apply(&all);
    running_pods(&c, "web", 1);
    let client = running_pods(&c, "cli", 1).remove(0);
    let list = c.kubectl_json(&["get", "services"]);
    let vips: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with('s'))
        })
        .map(|s| s["spec"]["clusterIP"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(vips.len(), COUNT);
    let script = format!(
        "for v in {}; do r=$(printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w 2 $v 80 | tail -n 1); [ -n \"$r\" ] || echo \"silent:$v\"; done; echo done",
        vips.join(" ")
    );
    wait_for("every Service answers", Duration::from_secs(300), || {
        let out = c.try_kubectl(&["exec", &client.name, "--", "sh", "-c", &script]);
        let silent: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("silent:"))
            .collect();
        if out.stdout.contains("done") && silent.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} of {COUNT} silent (first: {:?}) {}",
                silent.len(),
                silent.first(),
                out.stderr
            ))
        }
    });
}

/// Host-networked clients reach Services, balanced when their sockets
/// connect: a hostNetwork pod reaches backends on both nodes through a
/// ClusterIP, and the node itself reaches a ClusterIP and its own NodePort.
#[test]
fn host_networked_clients_reach_services() {
    require_root!(host_networked_clients_reach_services);
    let c = KubeCluster::up("kshost", &["--nodes", "2"]);
    let node0 = c.node_name(0).to_string();
    c.apply(&web_across_nodes("web", 2));
    c.apply(&service("web", "web", "\n  type: NodePort"));
    c.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: hostcli}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: hostcli}}}}
  template:
    metadata: {{labels: {{app: hostcli}}}}
    spec:
      hostNetwork: true
      nodeName: {node0}
      terminationGracePeriodSeconds: 1
      containers:
      - name: cli
        image: localhost/busybox:latest
        imagePullPolicy: Never
        command: ["sleep", "100000"]
"#
    ));
    let backends = running_pods(&c, "web", 2);
    let client = running_pods(&c, "hostcli", 1).remove(0);
    let f = frontends(&c, "web");
    let vip = SocketAddrV4::new(f.cluster_ip, 80);
    let answers = all_answer("the ClusterIP from a hostNetwork pod", || {
        who_from_pod(&c, &client, vip, SPREAD)
    });
    assert_eq!(
        pods_of(&answers),
        names(&backends),
        "a hostNetwork pod's connections reach the backends on both nodes"
    );

    let node_port = f.node_port.expect("a NodePort Service has a node port");
    for target in [
        vip.to_string(),
        format!("{}:{node_port}", c.env("NODE_IP_0")),
    ] {
        let body = wait_for(&format!("{target} from node 0 itself"), POD_WAIT, || {
            margay_tests::workload::http_get(&c, 0, &target, "/cgi-bin/who")
        });
        let pod = body
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            names(&backends).contains(&pod),
            "node 0 itself reaches a backend through {target}: {body}"
        );
    }
}

/// The chains of node `i`'s iptables (iptables-nft) ruleset, every table.
fn iptables_chains(c: &KubeCluster, i: usize) -> BTreeSet<String> {
    c.on_node_ok(i, &["iptables-save"])
        .lines()
        .filter_map(|l| l.strip_prefix(':')?.split_whitespace().next())
        .map(String::from)
        .collect()
}

fn kube_proxys(chains: &BTreeSet<String>) -> Vec<&String> {
    chains
        .iter()
        .filter(|c| {
            [
                "KUBE-SERVICES",
                "KUBE-PROXY-CANARY",
                "KUBE-SVC-",
                "KUBE-SEP-",
                "KUBE-POSTROUTING",
            ]
            .iter()
            .any(|p| c.starts_with(p))
        })
        .collect()
}

/// With `services: replace-kube-proxy`, a kube-proxy that still runs keeps
/// its rules and the agent says it runs; once it stops, its rules are
/// removed (kubelet's stay) and Services answer through the programs as
/// before; when it runs again, its rules are left alone again.
#[test]
fn kube_proxys_rules_go_once_it_stops_and_stay_while_it_runs() {
    require_root!(kube_proxys_rules_go_once_it_stops_and_stay_while_it_runs);
    let c = KubeCluster::up(
        "kskpx",
        &[
            "--nodes",
            "1",
            "--kube-proxy",
            "iptables",
            "--margay-config",
            "services=replace-kube-proxy",
            "--margay-config",
            "kube_proxy_check_interval=1s",
        ],
    );
    let node = c.node_name(0).to_string();
    c.apply(&web_on_node("web", 1, &node));
    c.apply(&web_on_node("cli", 1, &node));
    c.apply(&service("web", "web", ""));
    running_pods(&c, "web", 1);
    let client = running_pods(&c, "cli", 1).remove(0);
    let vip = SocketAddrV4::new(frontends(&c, "web").cluster_ip, 80);
    let health = format!("{}:9091", c.env("NODE_IP_0"));
    let metric = |name: &str| {
        http_get(&c, 0, &health, "/metrics")
            .ok()
            .and_then(|m| sample(&m, name, ""))
    };
    let kube_proxy_runs_and_keeps_its_rules = |what: &str| {
        wait_for(what, POD_WAIT, || {
            let chains = iptables_chains(&c, 0);
            let running = metric("margay_kube_proxy_running");
            if chains.iter().any(|c| c.starts_with("KUBE-SVC-")) && running == Some(1.0) {
                Ok(chains)
            } else {
                Err(format!("running {running:?}, chains {chains:?}"))
            }
        })
    };

    kube_proxy_runs_and_keeps_its_rules("kube-proxy's rules, and the agent saying it runs");
    std::thread::sleep(Duration::from_secs(3));
    let chains = iptables_chains(&c, 0);
    assert!(
        chains.contains("KUBE-SERVICES"),
        "three checks later, the rules of a kube-proxy that runs are still there: {chains:?}"
    );
    let kubelets: BTreeSet<String> = ["KUBE-KUBELET-CANARY", "KUBE-FIREWALL"]
        .into_iter()
        .map(String::from)
        .filter(|name| chains.contains(name))
        .collect();
    all_answer("the ClusterIP beside kube-proxy", || {
        who_from_pod(&c, &client, vip, 3)
    });

    let stopped = Stopped::process(
        c.pid_of(&format!("{node}-kube-proxy"))
            .expect("kube-proxy runs on node 0"),
    );
    let left = wait_for("kube-proxy's rules removed once it stops", POD_WAIT, || {
        let chains = iptables_chains(&c, 0);
        let (running, rules) = (
            metric("margay_kube_proxy_running"),
            metric("margay_kube_proxy_rules"),
        );
        if kube_proxys(&chains).is_empty() && running == Some(0.0) && rules == Some(0.0) {
            Ok(chains)
        } else {
            Err(format!(
                "running {running:?}, rules {rules:?}, chains {chains:?}"
            ))
        }
    });
    assert!(
        kubelets.is_subset(&left),
        "kubelet's chains {kubelets:?} stay: {left:?}"
    );
    all_answer("the ClusterIP once kube-proxy's rules are gone", || {
        who_from_pod(&c, &client, vip, 3)
    });

    drop(stopped);
    // A change makes it write its rules again at once.
    c.apply(&service("web2", "web", ""));
    kube_proxy_runs_and_keeps_its_rules("kube-proxy's rules back once it runs, and left alone");
}

/// Node 0's service frontends as `margayctl` lists them.
fn listed_frontends(c: &KubeCluster) -> Vec<serde_json::Value> {
    let out = c.on_node_ok(0, &["/opt/cni/bin/margayctl", "--json", "service", "list"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("margayctl's list: {e}: {out}"))
}

/// What changes in the API while a node's agent is away (stopped, then
/// killed and started again by kubelet) is in force once it is back: a
/// Service deleted meanwhile is gone from the maps, a Service whose
/// EndpointSlice was deleted has no backend and refuses, and a Service
/// created meanwhile answers on each of its ports, TCP and UDP, the UDP
/// backend seeing the client pod's own address.
#[test]
fn changes_made_while_the_agent_is_away_apply_when_it_returns() {
    require_root!(changes_made_while_the_agent_is_away_apply_when_it_returns);
    let c = KubeCluster::up("ksaway", &["--nodes", "1"]);
    c.apply(&web("web", 1));
    c.apply(&web("cli", 1));
    let backend = running_pods(&c, "web", 1).remove(0);
    let client = running_pods(&c, "cli", 1).remove(0);
    c.apply(&service("gone", "web", ""));
    // Selector-less, its one EndpointSlice written by hand.
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: manual}}
spec:
  ports: [{{name: http, port: 80, targetPort: {PORT}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: manual-1
  labels: {{kubernetes.io/service-name: manual}}
addressType: IPv4
ports: [{{name: http, port: {PORT}, protocol: TCP}}]
endpoints: [{{addresses: ["{}"], conditions: {{ready: true}}}}]
"#,
        backend.ip
    ));
    let gone = frontends(&c, "gone").cluster_ip;
    let manual = frontends(&c, "manual").cluster_ip;
    for vip in [gone, manual] {
        all_answer(&format!("{vip}:80 before"), || {
            who_from_pod(&c, &client, SocketAddrV4::new(vip, 80), 1)
        });
    }
    let udp = UdpServer::start(Some(&pod_netns(&c, &backend)), "udp");

    {
        let _away = Stopped::process(c.margay_container_pid(0, "margay-agent"));
        c.kubectl(&["delete", "service", "gone"]);
        c.kubectl(&["delete", "endpointslice", "manual-1"]);
        c.apply(&format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: multi}}
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: {PORT}}}
  - {{name: dns, protocol: UDP, port: 53, targetPort: {}}}
"#,
            udp.port
        ));
        c.kill_margay_container(0, "margay-agent");
    }
    let addr = format!("{}:9091", c.env("NODE_IP_0"));
    wait_for("the agent ready again", POD_WAIT, || {
        http_get(&c, 0, &addr, "/readyz")
    });

    let multi = frontends(&c, "multi").cluster_ip;
    let answers = all_answer("multi's TCP port", || {
        who_from_pod(&c, &client, SocketAddrV4::new(multi, 80), 1)
    });
    assert_eq!(seen_of(&answers), BTreeSet::from([client.ip.to_string()]));
    let client_ns = pod_netns(&c, &client);
    let said = wait_for("multi's UDP port", POD_WAIT, || {
        udp_request(Some(&client_ns), (multi, 53).into()).map_err(|e| e.to_string())
    });
    assert_eq!(
        said,
        format!("udp {}", client.ip),
        "the UDP backend sees the client pod"
    );

    let listed = listed_frontends(&c);
    assert!(
        !listed.iter().any(|f| f["address"] == gone.to_string()),
        "the Service deleted while the agent was away is gone: {listed:?}"
    );
    let manual_frontend = listed
        .iter()
        .find(|f| f["address"] == manual.to_string())
        .unwrap_or_else(|| panic!("manual's frontend stays: {listed:?}"));
    assert_eq!(
        manual_frontend["backends"],
        serde_json::json!([]),
        "its deleted EndpointSlice took its backend"
    );
    assert_eq!(
        who_from_pod(&c, &client, SocketAddrV4::new(manual, 80), 1),
        vec![None],
        "a Service without backends refuses"
    );
}

/// The README's demo, Calico's source-IP walkthrough, run as a user runs
/// it: kube-proxy and the linux dataplane (the pod logs a node's address),
/// kube-proxy off and the bpf dataplane in tunnel then DSR mode (the
/// external client's own), and back. The script checks each address; a
/// node switched back must keep no program or frontend of Margay's in the
/// way of kube-proxy's NodePort.
#[test]
fn the_source_ip_demo_switches_kube_proxy_off_and_back() {
    require_root!(the_source_ip_demo_switches_kube_proxy_off_and_back);
    let c = KubeCluster::attach(&unique_name("ksdemo"));
    let out = run_bounded(
        Command::new(repo_root().join("scripts/demo")).env("MARGAY_CLUSTER", c.name()),
        Duration::from_secs(900),
    );
    assert!(out.success, "scripts/demo:\n{}{}", out.stdout, out.stderr);
    let checks = out.stdout.matches("-> the pod saw").count();
    assert_eq!(checks, 4, "four addresses checked:\n{}", out.stdout);
}

/// A dual-stack cluster of two nodes: a Service with `ipFamilyPolicy:
/// RequireDualStack` answers on its IPv6 ClusterIP as on its IPv4 one,
/// every backend reached (one on each node: pods' IPv6 is routed between
/// nodes, via the nodes' IPv6 addresses), each seeing the client pod's own
/// address of the family it was asked in. A NetworkPolicy whose `ipBlock`
/// is the client's IPv6 address admits it over IPv6 alone, and one whose
/// block excepts it shuts it out of both.
#[test]
fn a_dual_stack_service_answers_on_both_families() {
    require_root!(a_dual_stack_service_answers_on_both_families);
    let c = KubeCluster::up("ksdual", &["--nodes", "2", "--dual-stack"]);
    c.apply(&web_across_nodes("web", 2));
    c.apply(&web_on_node("cli", 1, c.node_name(0)));
    c.apply(&service(
        "web",
        "web",
        "\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]",
    ));
    let backends = running_pods(&c, "web", 2);
    let client = &running_pods(&c, "cli", 1)[0];
    let client_v6 = client.ip6.expect("a dual-stack pod has an IPv6 address");
    let svc = c.kubectl_json(&["get", "service", "web"]);
    let cluster_ips: Vec<IpAddr> = svc["spec"]["clusterIPs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        cluster_ips[0].is_ipv6() && cluster_ips[1].is_ipv4(),
        "{cluster_ips:?}"
    );
    for &vip in &cluster_ips {
        let answers = all_answer(&format!("the ClusterIP {vip}"), || {
            who_from_pod(&c, client, std::net::SocketAddr::new(vip, 80), SPREAD)
        });
        let client_ip = if vip.is_ipv6() {
            client_v6.to_string()
        } else {
            client.ip.to_string()
        };
        assert_eq!(
            seen_of(&answers),
            BTreeSet::from([client_ip]),
            "through {vip}"
        );
        assert_eq!(pods_of(&answers), names(&backends), "through {vip}");
    }
    let routes = c.on_node_ok(0, &["ip", "-6", "route", "show", "proto", "77"]);
    assert!(
        routes.contains(&format!("via {} dev eth0", c.env("NODE_IP6_1"))),
        "node 1's IPv6 pods are routed via its IPv6 address: {routes}"
    );
    let names: BTreeSet<String> = listed_frontends(&c)
        .iter()
        .filter_map(|f| Some(f["name"].as_str()?.to_string()))
        .collect();
    assert!(
        names.contains("default/web:http") && names.contains("default/web:http (IPv4)"),
        "a service per family, the second named so: {names:?}"
    );

    let from_block = |name: &str, block: &str| {
        format!(
            "\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  policyTypes: [Ingress]\n  \
             ingress:\n  - from:\n    - ipBlock: {block}\n"
        )
    };
    let answered = |vip: std::net::IpAddr| {
        who_from_pod(&c, client, std::net::SocketAddr::new(vip, 80), 4)
            .iter()
            .filter(|w| w.is_some())
            .count()
    };
    c.apply(&from_block(
        "web-from-cli6",
        &format!("{{cidr: \"{client_v6}/128\"}}"),
    ));
    wait_for("the client admitted over IPv6 alone", POD_WAIT, || {
        match (answered(cluster_ips[0]), answered(cluster_ips[1])) {
            (4, 0) => Ok(()),
            other => Err(format!("answers (IPv6, IPv4): {other:?}")),
        }
    });
    c.kubectl(&["delete", "networkpolicy", "web-from-cli6"]);
    c.apply(&from_block(
        "web-but-cli6",
        &format!("{{cidr: \"::/0\", except: [\"{client_v6}/128\"]}}"),
    ));
    wait_for("the client shut out of both families", POD_WAIT, || match (
        answered(cluster_ips[0]),
        answered(cluster_ips[1]),
    ) {
        (0, 0) => Ok(()),
        other => Err(format!("answers (IPv6, IPv4): {other:?}")),
    });
}
