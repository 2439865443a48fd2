//! Services and EndpointSlices translated into the service model, as
//! kube-proxy reads them: a pure function of the API objects, the node's
//! name and its addresses.
//!
//! One [`ServiceSpec`] per IPv4 Service port. What cannot be balanced, or
//! would clash with what was translated before it, is left out with a
//! reason ([`Skipped`]), so one bad Service never holds back the others.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use margay_model::protocol::Protocol;
use margay_model::service::{
    Frontend, MAX_AFFINITY_TIMEOUT, MAX_BACKENDS, MAX_NAME, ServiceSpec, TrafficPolicy,
};

/// The label that names an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services with this label belong to another proxy (kube-proxy leaves
/// them alone too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// What the node should balance, from the API.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Translation {
    /// Valid as a set (`margay_model::service::validate` accepts it).
    pub specs: Vec<ServiceSpec>,
    pub skipped: Vec<Skipped>,
    /// The `healthCheckNodePort`s this node answers on.
    pub health_checks: Vec<HealthCheck>,
}

/// A Service (or one of its ports) left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Skipped {
    /// `namespace/name` or `namespace/name:port`.
    pub service: String,
    pub reason: String,
}

/// A `healthCheckNodePort` of an `externalTrafficPolicy: Local` Service,
/// with how many of its ready endpoints run on this node: an external load
/// balancer sends traffic only to nodes that answer 200.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HealthCheck {
    pub port: u16,
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// An endpoint address as kube-proxy judges it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    addr: Ipv4Addr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// Translates every Service into the model, for node `node` whose
/// addresses are `node_addrs` (its NodePorts answer there). Services are
/// taken oldest first, so of two that claim one external IP and port the
/// one that had it first keeps it.
pub fn translate(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node: &str,
    node_addrs: &[Ipv4Addr],
) -> Translation {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let (Some(namespace), Some(service)) = (
            slice.metadata.namespace.as_deref(),
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        if slice.address_type == "IPv4" {
            by_service
                .entry((namespace, service.as_str()))
                .or_default()
                .push(slice);
        }
    }
    let mut ordered: Vec<&Service> = services.iter().map(AsRef::as_ref).collect();
    ordered.sort_by(|a, b| {
        let age = |s: &Service| s.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (age(a), &a.metadata.namespace, &a.metadata.name).cmp(&(
            age(b),
            &b.metadata.namespace,
            &b.metadata.name,
        ))
    });

    let mut out = Translation::default();
    let mut claims = Claims::new(node_addrs);
    for service in ordered {
        let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let slices = by_service
            .get(&(namespace, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        translate_service(service, slices, node, &mut claims, &mut out);
    }
    out.specs.sort_by(|a, b| a.name.cmp(&b.name));
    out.skipped.sort();
    out.health_checks.sort();
    out
}

/// Frontends and NodePorts already taken, by which service.
struct Claims {
    frontends: HashMap<Frontend, String>,
    node_ports: HashMap<(u16, Protocol), String>,
    node_addrs: Vec<Ipv4Addr>,
}

impl Claims {
    fn new(node_addrs: &[Ipv4Addr]) -> Claims {
        Claims {
            frontends: HashMap::new(),
            node_ports: HashMap::new(),
            node_addrs: node_addrs.to_vec(),
        }
    }

    /// Takes every frontend of `spec` (its NodePort on each node address
    /// among them), or none and names the one already taken.
    fn take(&mut self, spec: &ServiceSpec) -> Result<(), String> {
        let node_port_frontends = spec.node_port.into_iter().flat_map(|port| {
            self.node_addrs.iter().map(move |&addr| Frontend {
                addr,
                port,
                protocol: spec.protocol,
            })
        });
        let frontends: Vec<Frontend> = std::iter::once(spec.cluster_ip())
            .chain(spec.external_frontends())
            .chain(node_port_frontends)
            .collect();
        let mut mine = HashSet::new();
        for f in &frontends {
            if let Some(other) = self.frontends.get(f) {
                return Err(format!("{f} is already {other}'s"));
            }
            if !mine.insert(*f) {
                return Err(format!("{f} is listed twice"));
            }
        }
        if let Some(port) = spec.node_port
            && let Some(other) = self.node_ports.get(&(port, spec.protocol))
        {
            return Err(format!(
                "node port {port}/{} is already {other}'s",
                spec.protocol
            ));
        }
        for f in frontends {
            self.frontends.insert(f, spec.name.clone());
        }
        if let Some(port) = spec.node_port {
            self.node_ports
                .insert((port, spec.protocol), spec.name.clone());
        }
        Ok(())
    }
}

fn translate_service(
    service: &Service,
    slices: &[&EndpointSlice],
    node: &str,
    claims: &mut Claims,
    out: &mut Translation,
) {
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let whole = format!("{namespace}/{name}");
    let skipped = &mut out.skipped;
    let mut skip = |service: String, reason: &str| {
        skipped.push(Skipped {
            service,
            reason: reason.to_string(),
        })
    };
    if service
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return skip(whole, "labelled for another proxy (service-proxy-name)");
    }
    let Some(spec) = &service.spec else {
        return skip(whole, "no spec");
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return skip(whole, "type ExternalName has nothing to balance");
    }
    let cluster_ips: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .chain(spec.cluster_ip.as_deref())
        .collect();
    if cluster_ips.contains(&"None") {
        return skip(whole, "headless: clients reach the pods directly");
    }
    let Some(vip) = cluster_ips
        .iter()
        .find_map(|ip| ip.parse::<Ipv4Addr>().ok())
    else {
        return skip(
            whole,
            "no IPv4 ClusterIP (IPv6 services are not balanced yet)",
        );
    };
    let node_ports_open = kind == "NodePort" || kind == "LoadBalancer";
    let mut external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if kind == "LoadBalancer" {
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        // ipMode Proxy: the load balancer proxies to the NodePorts itself and
        // the IP must not be answered on the node (as kube-proxy does).
        external_ips.extend(
            ingress
                .into_iter()
                .flatten()
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()),
        );
    }
    let external_ips: Vec<Ipv4Addr> = external_ips
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
            .clamp(1, MAX_AFFINITY_TIMEOUT)
    });
    let policy = |p: &Option<String>| match p.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let external_policy = policy(&spec.external_traffic_policy);
    let internal_policy = policy(&spec.internal_traffic_policy);

    let mut local_endpoints: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut translated = Vec::new();
    for port in spec.ports.iter().flatten() {
        let port_name = port.name.as_deref().filter(|n| !n.is_empty());
        let label = match port_name {
            Some(p) => format!("{whole}:{p}"),
            None => whole.clone(),
        };
        let protocol_name = port.protocol.as_deref().unwrap_or("TCP");
        let protocol = match protocol_name {
            "TCP" => Protocol::TCP,
            "UDP" => Protocol::UDP,
            other => {
                skip(label, &format!("protocol {other} is not balanced"));
                continue;
            }
        };
        let Ok(service_port) = u16::try_from(port.port) else {
            skip(label, &format!("port {} is not a port", port.port));
            continue;
        };
        let chosen = serving(&candidates(slices, port, protocol_name, node));
        if chosen.len() > MAX_BACKENDS {
            skip(
                label,
                &format!("{} endpoints, more than {MAX_BACKENDS}", chosen.len()),
            );
            continue;
        }
        local_endpoints.extend(
            chosen
                .iter()
                .filter(|(_, local)| *local)
                .map(|(b, _)| *b.ip()),
        );
        let backends: Vec<SocketAddrV4> = chosen.into_iter().map(|(b, _)| b).collect();
        let node_port = port
            .node_port
            .filter(|_| node_ports_open)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let has_external = node_port.is_some() || !external_ips.is_empty();
        let model = ServiceSpec {
            backends,
            affinity_timeout,
            node_port,
            external_ips: external_ips.clone(),
            // Local without an external frontend means nothing (the API
            // refuses it on a ClusterIP Service; the model too).
            external_traffic_policy: if has_external {
                external_policy
            } else {
                TrafficPolicy::Cluster
            },
            internal_traffic_policy: internal_policy,
            ..ServiceSpec::new(spec_name(&label), vip, service_port, protocol)
        };
        if let Err(e) = model.check() {
            skip(label, &e.to_string());
            continue;
        }
        match claims.take(&model) {
            Ok(()) => translated.push(model),
            Err(clash) => skip(label, &clash),
        }
    }
    out.specs.extend(translated);
    if external_policy == TrafficPolicy::Local
        && let Some(port) = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
    {
        out.health_checks.push(HealthCheck {
            port,
            namespace,
            name,
            local_endpoints: local_endpoints.len(),
        });
    }
}

/// The endpoints of `slices` for service port `port`: the slices' port of
/// the same name and protocol gives each slice's target port (a named
/// `targetPort` may resolve differently per pod).
fn candidates(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    protocol: &str,
    node: &str,
) -> Vec<(Candidate, u16)> {
    let wanted_name = port.name.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for slice in slices {
        let Some(target) = slice.ports.iter().flatten().find_map(|p| {
            let same_name = p.name.as_deref().unwrap_or_default() == wanted_name;
            let same_protocol = p.protocol.as_deref().unwrap_or("TCP") == protocol;
            (same_name && same_protocol)
                .then_some(p.port)
                .flatten()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
        }) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            out.extend(
                judge(endpoint, node)
                    .into_iter()
                    .map(|candidate| (candidate, target)),
            );
        }
    }
    out
}

/// An endpoint's IPv4 addresses with its conditions, as kube-proxy reads
/// them: unset `ready` and `serving` mean yes, unset `terminating` no.
fn judge(endpoint: &Endpoint, node: &str) -> Vec<Candidate> {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    let local = endpoint.node_name.as_deref() == Some(node);
    endpoint
        .addresses
        .iter()
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .map(|addr| Candidate {
            addr,
            ready,
            serving,
            terminating,
            local,
        })
        .collect()
}

/// The backends that serve: the ready endpoints, or when there is none,
/// the terminating ones still serving (so a rollout's last pod finishes
/// its connections' successors instead of refusing them). Sorted, each
/// once, with whether it runs on this node.
fn serving(candidates: &[(Candidate, u16)]) -> Vec<(SocketAddrV4, bool)> {
    let pick = |keep: &dyn Fn(&Candidate) -> bool| -> BTreeMap<SocketAddrV4, bool> {
        candidates
            .iter()
            .filter(|(c, _)| keep(c))
            .map(|(c, port)| (SocketAddrV4::new(c.addr, *port), c.local))
            .collect()
    };
    let mut chosen = pick(&|c| c.ready && !c.terminating);
    if chosen.is_empty() {
        chosen = pick(&|c| c.serving && c.terminating);
    }
    chosen.into_iter().collect()
}

/// A model name (at most [`MAX_NAME`] bytes): the label itself, or when
/// it is longer its start and a hash of the whole, so names stay unique.
fn spec_name(label: &str) -> String {
    if label.len() <= MAX_NAME {
        return label.to_string();
    }
    // FNV-1a: stable across runs and builds (the maps keep names).
    let hash = label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = MAX_NAME - 17;
    while !label.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash:016x}", &label[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str, spec: serde_json::Value) -> Arc<Service> {
        service_with(name, spec, json!({}), json!({}))
    }

    fn service_with(
        name: &str,
        spec: serde_json::Value,
        status: serde_json::Value,
        labels: serde_json::Value,
    ) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "ns", "name": name, "labels": labels,
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": spec,
                "status": status,
            }))
            .unwrap(),
        )
    }

    /// A slice of service `svc`: `ports` as (name, port, protocol),
    /// endpoints as (address, node, ready, serving, terminating).
    fn slice(
        svc: &str,
        family: &str,
        ports: &[(&str, i32, &str)],
        endpoints: &[(&str, &str, bool, bool, bool)],
    ) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "ns", "name": format!("{svc}-{}", endpoints.len()),
                             "labels": {SERVICE_NAME_LABEL: svc}},
                "addressType": family,
                "ports": ports.iter().map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto})).collect::<Vec<_>>(),
                "endpoints": endpoints.iter().map(|(a, node, ready, serving, terminating)| json!({
                    "addresses": [a], "nodeName": node,
                    "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                })).collect::<Vec<_>>(),
            }))
            .unwrap(),
        )
    }

    fn sock(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    const NODE: [Ipv4Addr; 1] = [Ipv4Addr::new(192, 168, 0, 10)];

    #[test]
    fn every_kind_of_frontend_of_a_load_balancer_service_is_translated() {
        let web = service_with(
            "web",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                   "ports": [{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080},
                             {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}],
                   "externalIPs": ["203.0.113.9"],
                   "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                   "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                   "internalTrafficPolicy": "Local"}),
            json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"},
                                                 {"ip": "198.51.100.2", "ipMode": "Proxy"},
                                                 {"hostname": "lb.example"}]}}),
            json!({}),
        );
        let slices = [
            // The named target port resolves to 8080 in one slice, 8081 in
            // the other; one address is in both slices.
            slice(
                "web",
                "IPv4",
                &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
                &[
                    ("10.244.0.5", "n0", true, true, false),
                    ("10.244.1.5", "n1", true, true, false),
                    ("10.244.1.6", "n1", false, true, true),
                ],
            ),
            slice(
                "web",
                "IPv4",
                &[("http", 8081, "TCP")],
                &[
                    ("10.244.0.5", "n0", true, true, false),
                    ("10.244.2.7", "n2", true, true, false),
                ],
            ),
            slice(
                "web",
                "IPv6",
                &[("http", 8080, "TCP")],
                &[("fd00::5", "n0", true, true, false)],
            ),
        ];
        let t = translate(&[web], &slices, "n0", &NODE);
        assert_eq!(t.skipped, []);
        let [dns, http] = &t.specs[..] else {
            panic!("{:?}", t.specs)
        };
        assert_eq!(http.name, "ns/web:http");
        assert_eq!(http.vip, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!((http.port, http.protocol), (80, Protocol::TCP));
        assert_eq!(
            http.backends,
            [
                sock("10.244.0.5:8080"),
                sock("10.244.0.5:8081"),
                sock("10.244.1.5:8080"),
                sock("10.244.2.7:8081")
            ],
            "ready endpoints of every IPv4 slice at their slice's port; not the terminating one"
        );
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(
            http.external_ips,
            [
                Ipv4Addr::new(198, 51, 100, 1),
                Ipv4Addr::new(203, 0, 113, 9)
            ],
            "externalIPs and ingress IPs, not those the load balancer proxies itself"
        );
        assert_eq!(http.affinity_timeout, Some(60));
        assert_eq!(http.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(http.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(
            (dns.name.as_str(), dns.port, dns.protocol),
            ("ns/web:dns", 53, Protocol::UDP)
        );
        assert_eq!(
            dns.backends,
            [sock("10.244.0.5:5353"), sock("10.244.1.5:5353")]
        );
        assert_eq!(
            t.health_checks,
            [HealthCheck {
                port: 32000,
                namespace: "ns".into(),
                name: "web".into(),
                local_endpoints: 1
            }]
        );
        margay_model::service::validate(&t.specs).unwrap();
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let svc = || {
            service(
                "api",
                json!({"clusterIP": "10.96.0.11", "ports": [{"port": 443}]}),
            )
        };
        let draining = slice(
            "api",
            "IPv4",
            &[("", 8443, "TCP")],
            &[
                ("10.244.0.8", "n0", false, true, true),
                ("10.244.0.9", "n0", false, false, true),
            ],
        );
        let t = translate(&[svc()], std::slice::from_ref(&draining), "n0", &NODE);
        assert_eq!(t.specs[0].name, "ns/api");
        assert_eq!(
            t.specs[0].backends,
            [sock("10.244.0.8:8443")],
            "serving, terminating: used"
        );
        let ready = slice(
            "api",
            "IPv4",
            &[("", 8443, "TCP")],
            &[("10.244.1.2", "n1", true, true, false)],
        );
        let t = translate(&[svc()], &[draining, ready], "n0", &NODE);
        assert_eq!(
            t.specs[0].backends,
            [sock("10.244.1.2:8443")],
            "a ready one wins"
        );
        let t = translate(&[svc()], &[], "n0", &NODE);
        assert_eq!(t.specs[0].backends, [], "no slice: a frontend that refuses");
    }

    #[test]
    fn what_cannot_be_balanced_is_skipped_with_a_reason() {
        let services = [
            service_with(
                "theirs",
                json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}),
                json!({}),
                json!({SERVICE_PROXY_NAME_LABEL: "other"}),
            ),
            service(
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
            service(
                "alias",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
            service(
                "v6",
                json!({"clusterIP": "fd00::20", "clusterIPs": ["fd00::20"], "ports": [{"port": 80}]}),
            ),
            service(
                "mixed",
                json!({"clusterIP": "10.96.0.21", "ports": [{"name": "a", "port": 80},
                                                             {"name": "s", "port": 90, "protocol": "SCTP"}]}),
            ),
        ];
        let t = translate(&services, &[], "n0", &NODE);
        assert_eq!(
            t.specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["ns/mixed:a"]
        );
        let skipped: Vec<(&str, &str)> = t
            .skipped
            .iter()
            .map(|s| (s.service.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("ns/alias", "type ExternalName has nothing to balance"),
                ("ns/headless", "headless: clients reach the pods directly"),
                ("ns/mixed:s", "protocol SCTP is not balanced"),
                (
                    "ns/theirs",
                    "labelled for another proxy (service-proxy-name)"
                ),
                (
                    "ns/v6",
                    "no IPv4 ClusterIP (IPv6 services are not balanced yet)"
                ),
            ]
        );
    }

    #[test]
    fn of_two_services_claiming_one_external_ip_the_older_keeps_it() {
        let mut newer: Service = (*service(
            "newer",
            json!({"clusterIP": "10.96.0.31", "ports": [{"port": 80}], "externalIPs": ["203.0.113.1"]}),
        ))
        .clone();
        newer.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-02-01T00:00:00Z".parse().unwrap(),
            ));
        let older = service(
            "older",
            json!({"clusterIP": "10.96.0.30", "ports": [{"port": 80}], "externalIPs": ["203.0.113.1"]}),
        );
        // A NodePort on the node's own address as an external IP: the same frontend.
        let on_node = service(
            "on-node",
            json!({"type": "NodePort", "clusterIP": "10.96.0.32", "ports": [{"port": 30099, "nodePort": 30099}],
                   "externalIPs": ["192.168.0.10"]}),
        );
        let t = translate(&[Arc::new(newer), older, on_node], &[], "n0", &NODE);
        assert_eq!(
            t.specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["ns/older"]
        );
        assert_eq!(
            t.skipped,
            [
                Skipped {
                    service: "ns/newer".into(),
                    reason: "203.0.113.1:80/tcp is already ns/older's".into()
                },
                Skipped {
                    service: "ns/on-node".into(),
                    reason: "192.168.0.10:30099/tcp is listed twice".into()
                },
            ]
        );
        margay_model::service::validate(&t.specs).unwrap();
    }

    #[test]
    fn long_names_are_cut_with_a_hash_that_keeps_them_apart() {
        let long = "n".repeat(63);
        let a = spec_name(&format!("{long}/{long}:http"));
        let b = spec_name(&format!("{long}/{long}:https"));
        assert!(a.len() <= MAX_NAME && b.len() <= MAX_NAME, "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(spec_name("ns/web:http"), "ns/web:http");
    }
}
