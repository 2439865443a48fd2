//! NetworkPolicies (networking.k8s.io/v1) translated into the policy model,
//! as the API defines them: a pure function of the policies, the cluster's
//! pods and namespaces, and the node's name.
//!
//! - A pod of this node that some policy selects for a direction gets, for
//!   that direction, the union of those policies' rules, and what none of
//!   them allows is denied; a pod no policy selects for a direction gets
//!   no rules there (all allowed).
//! - Every peer that names pods (`podSelector`, `namespaceSelector`, or
//!   both: AND) or addresses (`ipBlock` with `except`) is a set of the
//!   node ([`IpSets`]), shared by every rule that names the same peer: a
//!   selector over five thousand pods is one set, not five thousand rules.
//! - Ports by number, range (`endPort`) or name. A named port is resolved
//!   on the pod it is a port of: for ingress the selected pod itself, for
//!   egress each destination pod, whose address joins the set with its
//!   own number for that name.
//! - SCTP ports are left out with a reason (the programs read no SCTP
//!   ports yet): what they would allow stays denied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use margay_model::ip_set::{IpSets, SetMember, SetPort};
use margay_model::policy::{Action, PolicySpec, Ports, Rule};
use margay_model::protocol::Protocol;

use crate::selector;

/// What this node enforces, from the API.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PolicyTranslation {
    /// The policy of each pod of this node that a NetworkPolicy selects;
    /// a pod of the node not here has none.
    pub endpoints: Vec<EndpointPolicy>,
    /// Every set a rule names, by name.
    pub sets: IpSets,
    /// What was left out, and why.
    pub skipped: Vec<Skipped>,
}

/// A pod's policy, with the addresses its endpoint is found by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub spec: PolicySpec,
}

/// A pod's namespace and name.
pub type PodName = (String, String);

/// The addresses of this node's pods as their endpoints were registered,
/// for pods whose status does not show them yet (a new pod's ADD asks for
/// its policy before the kubelet writes its status).
pub type LocalAddresses = HashMap<PodName, Vec<IpAddr>>;

/// A policy's port (or a whole policy) left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Skipped {
    /// `namespace/name` of the NetworkPolicy.
    pub policy: String,
    pub reason: String,
}

/// A pod as policy sees it: running with addresses, not on the host's
/// network (its address is the node's, which policy does not judge).
struct PodView<'a> {
    pod: &'a Pod,
    namespace: &'a str,
    ips: Vec<IpAddr>,
    local: bool,
}

impl PodView<'_> {
    fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.pod.metadata.labels.as_ref()
    }

    /// The number of its container port `name` on `protocol`.
    fn named_port(&self, name: &str, protocol: &str) -> Option<u16> {
        let spec = self.pod.spec.as_ref()?;
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name)
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .and_then(|p| u16::try_from(p.container_port).ok())
    }
}

fn view<'a>(pod: &'a Pod, node: &str, local: &LocalAddresses) -> Option<PodView<'a>> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref();
    if spec.host_network == Some(true)
        || matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    {
        return None;
    }
    let namespace = pod.metadata.namespace.as_deref()?;
    let mut ips: Vec<IpAddr> = status
        .iter()
        .flat_map(|s| {
            s.pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .chain(s.pod_ip.as_deref())
        })
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let on_node = spec.node_name.as_deref() == Some(node);
    if ips.is_empty() && on_node {
        let name = (namespace.to_string(), pod.metadata.name.clone()?);
        ips = local.get(&name).cloned().unwrap_or_default();
    }
    ips.sort_unstable();
    ips.dedup();
    if ips.is_empty() {
        return None;
    }
    Some(PodView {
        pod,
        namespace,
        ips,
        local: on_node,
    })
}

/// Which pods a peer names: those of the namespaces it names (by selector,
/// or the policy's own) whose labels its pod selector takes (none: all).
struct PodPeer<'a> {
    namespaces: Scope<'a>,
    pods: Option<&'a LabelSelector>,
}

enum Scope<'a> {
    Namespace(&'a str),
    Selected(&'a LabelSelector),
}

impl PodPeer<'_> {
    fn takes(
        &self,
        pod: &PodView,
        namespace_labels: &HashMap<&str, &BTreeMap<String, String>>,
    ) -> bool {
        let in_scope = match self.namespaces {
            Scope::Namespace(ns) => pod.namespace == ns,
            Scope::Selected(s) => {
                selector::matches(s, namespace_labels.get(pod.namespace).copied())
            }
        };
        in_scope && self.pods.is_none_or(|s| selector::matches(s, pod.labels()))
    }

    /// What the set of this peer (on `port`, a named port, if any) is
    /// called: the same peer in two policies is one set.
    fn set_name(&self, port: Option<(&str, &str)>) -> String {
        let scope = match self.namespaces {
            Scope::Namespace(ns) => format!("ns:{ns}"),
            Scope::Selected(s) => format!("nsel:{}", selector::canonical(s)),
        };
        let pods = self
            .pods
            .map(selector::canonical)
            .unwrap_or_else(|| "*".into());
        let port = port
            .map(|(proto, name)| format!("|{proto}/{name}"))
            .unwrap_or_default();
        hashed_name(&format!("{scope}|{pods}{port}"))
    }
}

/// `np-` and a 64-bit FNV-1a hash of `key`: stable across runs and
/// builds, and short enough for the maps' records.
fn hashed_name(key: &str) -> String {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("np-{hash:016x}")
}

/// The direction a rule list is of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// Whose rules are being made: a selected pod's, in one direction, from
/// policy `source` of `namespace`.
struct Subject<'a> {
    direction: Direction,
    source: &'a str,
    namespace: &'a str,
    pod: &'a PodView<'a>,
}

/// Translates every NetworkPolicy for node `node`, whose pods not yet
/// showing their addresses have those of `local`.
pub fn translate(
    policies: &[Arc<NetworkPolicy>],
    pods: &[Arc<Pod>],
    namespaces: &[Arc<Namespace>],
    node: &str,
    local: &LocalAddresses,
) -> PolicyTranslation {
    let namespace_labels: HashMap<&str, &BTreeMap<String, String>> = namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref()?)))
        .collect();
    let views: Vec<PodView> = pods.iter().filter_map(|p| view(p, node, local)).collect();
    let mut ordered: Vec<&NetworkPolicy> = policies.iter().map(AsRef::as_ref).collect();
    ordered.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });

    let mut out = Translator {
        views: &views,
        namespace_labels: &namespace_labels,
        sets: IpSets::new(),
        skipped: BTreeSet::new(),
    };
    // Per local pod (index into views), each direction's rules; None: no
    // policy selects it for that direction.
    let mut rules: BTreeMap<usize, [Option<Vec<Rule>>; 2]> = BTreeMap::new();
    for policy in ordered {
        out.policy(policy, &mut rules);
    }
    let endpoints = rules
        .into_iter()
        .map(|(i, [ingress, egress])| {
            let pod = &views[i];
            EndpointPolicy {
                namespace: pod.namespace.to_string(),
                name: pod.pod.metadata.name.clone().unwrap_or_default(),
                ips: pod.ips.clone(),
                spec: PolicySpec { ingress, egress },
            }
        })
        .collect();
    PolicyTranslation {
        endpoints,
        sets: out.sets,
        skipped: out.skipped.into_iter().collect(),
    }
}

struct Translator<'a> {
    views: &'a [PodView<'a>],
    namespace_labels: &'a HashMap<&'a str, &'a BTreeMap<String, String>>,
    sets: IpSets,
    skipped: BTreeSet<Skipped>,
}

impl Translator<'_> {
    fn policy(
        &mut self,
        policy: &NetworkPolicy,
        rules: &mut BTreeMap<usize, [Option<Vec<Rule>>; 2]>,
    ) {
        let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
        let source = format!(
            "{namespace}/{}",
            policy.metadata.name.as_deref().unwrap_or_default()
        );
        let Some(spec) = &policy.spec else {
            return;
        };
        // The API server fills policyTypes in; an object without them is
        // read as it would be: Ingress, and Egress when it has egress rules.
        let types: Vec<&str> = match &spec.policy_types {
            Some(t) if !t.is_empty() => t.iter().map(String::as_str).collect(),
            _ if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => vec!["Ingress", "Egress"],
            _ => vec!["Ingress"],
        };
        let everything = LabelSelector::default();
        let selected = spec.pod_selector.as_ref().unwrap_or(&everything);
        for (i, pod) in self.views.iter().enumerate() {
            if !pod.local
                || pod.namespace != namespace
                || !selector::matches(selected, pod.labels())
            {
                continue;
            }
            let lists = rules.entry(i).or_default();
            if types.contains(&"Ingress") {
                let list = lists[0].get_or_insert_with(Vec::new);
                let subject = Subject {
                    direction: Direction::Ingress,
                    source: &source,
                    namespace,
                    pod,
                };
                for rule in spec.ingress.iter().flatten() {
                    let peers = rule.from.as_deref().unwrap_or_default();
                    let ports = rule.ports.as_deref().unwrap_or_default();
                    self.rules(&subject, peers, ports, list);
                }
            }
            if types.contains(&"Egress") {
                let list = lists[1].get_or_insert_with(Vec::new);
                let subject = Subject {
                    direction: Direction::Egress,
                    source: &source,
                    namespace,
                    pod,
                };
                for rule in spec.egress.iter().flatten() {
                    let peers = rule.to.as_deref().unwrap_or_default();
                    let ports = rule.ports.as_deref().unwrap_or_default();
                    self.rules(&subject, peers, ports, list);
                }
            }
        }
    }

    /// The rules of one ingress or egress rule of a policy for `subject`:
    /// each peer (none: any address) with each port (none: any port),
    /// appended to `list` unless already there.
    fn rules(
        &mut self,
        subject: &Subject,
        peers: &[NetworkPolicyPeer],
        ports: &[NetworkPolicyPort],
        list: &mut Vec<Rule>,
    ) {
        let Subject {
            direction,
            source,
            namespace,
            pod,
        } = *subject;
        // None: any peer.
        let peers: Vec<Option<&NetworkPolicyPeer>> = if peers.is_empty() {
            vec![None]
        } else {
            peers.iter().map(Some).collect()
        };
        let any_port = [NetworkPolicyPort::default()];
        let ports = if ports.is_empty() {
            &any_port[..]
        } else {
            ports
        };
        for port in ports {
            let protocol_name = port.protocol.as_deref().unwrap_or("TCP");
            let protocol = match protocol_name {
                "TCP" => Protocol::TCP,
                "UDP" => Protocol::UDP,
                other => {
                    self.skip(
                        source,
                        format!("protocol {other}: not enforced yet, stays denied"),
                    );
                    continue;
                }
            };
            // Some: a number or a range; None: all ports, or a named port
            // resolved per pod below.
            let (numbered, name) = match &port.port {
                None => (
                    Some(Ports {
                        lo: 0,
                        hi: u16::MAX,
                    }),
                    None,
                ),
                Some(IntOrString::Int(n)) => {
                    let Some(lo) = u16::try_from(*n).ok().filter(|n| *n != 0) else {
                        self.skip(source, format!("port {n} is not a port"));
                        continue;
                    };
                    let hi = port
                        .end_port
                        .and_then(|e| u16::try_from(e).ok())
                        .unwrap_or(lo);
                    (Some(Ports { lo, hi: hi.max(lo) }), None)
                }
                Some(IntOrString::String(name)) => (None, Some(name.as_str())),
            };
            let numbered = match (numbered, name) {
                (Some(p), _) => Some(p),
                // Ingress: the selected pod's own port of that name.
                (None, Some(name)) if direction == Direction::Ingress => {
                    match pod.named_port(name, protocol_name) {
                        Some(n) => Some(Ports { lo: n, hi: n }),
                        None => continue,
                    }
                }
                // Egress: each destination's own, in the peer's set.
                (None, _) => None,
            };
            let named_port = match (numbered, name) {
                (None, Some(name)) => Some((protocol_name, name)),
                _ => None,
            };
            for peer in &peers {
                let set = match peer {
                    None if numbered.is_some() => None,
                    // Any destination, on its own port of that name.
                    None => Some(self.pod_set(
                        &PodPeer {
                            namespaces: Scope::Selected(&LabelSelector::default()),
                            pods: None,
                        },
                        named_port,
                    )),
                    Some(p) => match self.peer_set(namespace, p, named_port) {
                        Some(set) => Some(set),
                        None => {
                            self.skip(source, "a peer with neither pods nor addresses".into());
                            continue;
                        }
                    },
                };
                let rule = Rule {
                    action: Action::Allow,
                    cidr: None,
                    set,
                    protocol: Some(protocol),
                    ports: numbered.filter(|p| (p.lo, p.hi) != (0, u16::MAX)),
                    source: Some(source.to_string()),
                };
                let same = |r: &Rule| {
                    (&r.set, r.protocol, r.ports) == (&rule.set, rule.protocol, rule.ports)
                };
                if !list.iter().any(same) {
                    list.push(rule);
                }
            }
        }
    }

    /// The set of peer `peer` of a policy of `namespace`, on the named port
    /// `port` (protocol, name) when there is one; None for a peer that
    /// names nothing (the API refuses those).
    fn peer_set(
        &mut self,
        namespace: &str,
        peer: &NetworkPolicyPeer,
        port: Option<(&str, &str)>,
    ) -> Option<String> {
        if let Some(block) = &peer.ip_block {
            // A named port is a pod's: an address block has none.
            if port.is_some() {
                return None;
            }
            return self.block_set(block);
        }
        let pod_peer = match (&peer.namespace_selector, &peer.pod_selector) {
            (None, None) => return None,
            (Some(ns), pods) => PodPeer {
                namespaces: Scope::Selected(ns),
                pods: pods.as_ref(),
            },
            (None, Some(pods)) => PodPeer {
                namespaces: Scope::Namespace(namespace),
                pods: Some(pods),
            },
        };
        Some(self.pod_set(&pod_peer, port))
    }

    /// The set of the pods `peer` names (each on its own number for the
    /// named port `port`, leaving out those without one).
    fn pod_set(&mut self, peer: &PodPeer, port: Option<(&str, &str)>) -> String {
        let name = peer.set_name(port);
        if self.sets.contains_key(&name) {
            return name;
        }
        let mut members = BTreeSet::new();
        for pod in self
            .views
            .iter()
            .filter(|p| peer.takes(p, self.namespace_labels))
        {
            let member_port = match port {
                None => None,
                Some((protocol, port_name)) => match pod.named_port(port_name, protocol) {
                    Some(n) => Some(SetPort {
                        protocol: Protocol::from_name(protocol).unwrap_or(Protocol::TCP),
                        port: n,
                    }),
                    None => continue,
                },
            };
            for ip in &pod.ips {
                members.insert(SetMember {
                    cidr: IpNetwork::from(*ip),
                    except: false,
                    port: member_port,
                });
            }
        }
        self.sets
            .insert(name.clone(), members.into_iter().collect());
        name
    }

    /// The set of an `ipBlock`: its CIDR, less its exceptions. None when
    /// the CIDR does not parse (the API refuses those).
    fn block_set(&mut self, block: &k8s_openapi::api::networking::v1::IPBlock) -> Option<String> {
        let cidr: IpNetwork = block.cidr.parse().ok()?;
        let mut key = format!("block:{cidr}");
        let mut members = vec![SetMember::cidr(cidr)];
        let mut excepts: Vec<IpNetwork> = block
            .except
            .iter()
            .flatten()
            .filter_map(|e| e.parse().ok())
            .collect();
        excepts.sort_unstable();
        excepts.dedup();
        for e in excepts {
            key.push_str(&format!(",{e}"));
            members.push(SetMember {
                cidr: e,
                except: true,
                port: None,
            });
        }
        let name = hashed_name(&key);
        self.sets.entry(name.clone()).or_insert(members);
        Some(name)
    }

    fn skip(&mut self, policy: &str, reason: String) {
        self.skipped.insert(Skipped {
            policy: policy.to_string(),
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const NODE: &str = "n0";

    /// A running pod: `ns/name` on `node` at `ip`, with `labels` and
    /// container ports `ports` (name, number, protocol).
    fn pod(
        ns_name: &str,
        node: &str,
        ip: &str,
        labels: Value,
        ports: &[(&str, i32, &str)],
    ) -> Arc<Pod> {
        let (ns, name) = ns_name.split_once('/').unwrap();
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p, proto)| json!({"name": n, "containerPort": p, "protocol": proto}))
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": ns, "name": name, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
            }))
            .unwrap(),
        )
    }

    fn namespace(name: &str, labels: Value) -> Arc<Namespace> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
    }

    fn policy(ns_name: &str, spec: Value) -> Arc<NetworkPolicy> {
        let (ns, name) = ns_name.split_once('/').unwrap();
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    /// The cluster the tests share: namespaces shop (team=a) and ops
    /// (team=b); in shop a web pod and a db pod on this node and a web pod
    /// on another; in ops a monitor pod elsewhere; a host-network pod.
    fn cluster() -> (Vec<Arc<Pod>>, Vec<Arc<Namespace>>) {
        let mut host = (*pod(
            "shop/host",
            NODE,
            "192.168.0.10",
            json!({"app": "web"}),
            &[],
        ))
        .clone();
        host.spec.as_mut().unwrap().host_network = Some(true);
        let pods = vec![
            pod(
                "shop/web-1",
                NODE,
                "10.0.0.1",
                json!({"app": "web"}),
                &[("http", 8080, "TCP")],
            ),
            pod(
                "shop/db-1",
                NODE,
                "10.0.0.2",
                json!({"app": "db"}),
                &[("sql", 5432, "TCP")],
            ),
            pod(
                "shop/web-2",
                "n1",
                "10.0.1.1",
                json!({"app": "web"}),
                &[("http", 8081, "TCP")],
            ),
            pod(
                "ops/monitor",
                "n1",
                "10.0.1.9",
                json!({"app": "monitor"}),
                &[],
            ),
            Arc::new(host),
        ];
        let namespaces = vec![
            namespace("shop", json!({"team": "a"})),
            namespace("ops", json!({"team": "b"})),
        ];
        (pods, namespaces)
    }

    fn run(policies: &[Arc<NetworkPolicy>]) -> PolicyTranslation {
        let (pods, namespaces) = cluster();
        translate(policies, &pods, &namespaces, NODE, &LocalAddresses::new())
    }

    fn spec_of<'a>(t: &'a PolicyTranslation, name: &str) -> Option<&'a PolicySpec> {
        t.endpoints.iter().find(|e| e.name == name).map(|e| &e.spec)
    }

    fn members(t: &PolicyTranslation, set: &Option<String>) -> Vec<String> {
        t.sets[set.as_ref().expect("a set")]
            .iter()
            .map(|m| match (m.except, m.port) {
                (true, _) => format!("!{}", m.cidr),
                (false, Some(p)) => format!("{}@{}/{}", m.cidr, p.protocol, p.port),
                (false, None) => m.cidr.to_string(),
            })
            .collect()
    }

    #[test]
    fn a_new_pod_is_judged_by_its_registered_address_before_its_status_has_one() {
        let (mut pods, namespaces) = cluster();
        let mut new = (*pod("shop/web-3", NODE, "", json!({"app": "web"}), &[])).clone();
        new.status = None;
        pods.push(Arc::new(new));
        let policies = [policy(
            "shop/web-from-web",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
        )];
        let unknown = translate(&policies, &pods, &namespaces, NODE, &LocalAddresses::new());
        assert!(
            spec_of(&unknown, "web-3").is_none(),
            "no address, no endpoint"
        );

        let local = LocalAddresses::from([(
            ("shop".to_string(), "web-3".to_string()),
            vec!["10.0.0.3".parse().unwrap()],
        )]);
        let t = translate(&policies, &pods, &namespaces, NODE, &local);
        let web3 = t.endpoints.iter().find(|e| e.name == "web-3").unwrap();
        assert_eq!(web3.ips, ["10.0.0.3".parse::<IpAddr>().unwrap()]);
        let rule = &web3.spec.ingress.as_ref().unwrap()[0];
        assert_eq!(
            members(&t, &rule.set),
            ["10.0.0.1/32", "10.0.0.3/32", "10.0.1.1/32"],
            "its address is a peer's too"
        );

        let elsewhere = LocalAddresses::from([(
            ("shop".to_string(), "web-2".to_string()),
            vec!["10.9.9.9".parse().unwrap()],
        )]);
        let t = translate(&policies, &pods, &namespaces, NODE, &elsewhere);
        assert!(
            !members(&t, &t.endpoints[0].spec.ingress.as_ref().unwrap()[0].set)
                .contains(&"10.9.9.9/32".to_string()),
            "a status's addresses, or another node's pod, are not overridden"
        );
    }

    #[test]
    fn default_deny_selects_every_local_pod_of_its_namespace() {
        let t = run(&[policy(
            "shop/deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        )]);
        let names: Vec<&str> = t.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["web-1", "db-1"],
            "local pods of shop only, no host-network pod"
        );
        let web = spec_of(&t, "web-1").unwrap();
        assert_eq!(
            (web.ingress.as_deref(), web.egress.as_deref()),
            (Some(&[][..]), Some(&[][..]))
        );
        assert_eq!(t.endpoints[0].ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        // Without policyTypes and without egress rules: ingress only.
        let t = run(&[policy("shop/deny", json!({"podSelector": {}}))]);
        assert_eq!(spec_of(&t, "web-1").unwrap().egress, None);
    }

    #[test]
    fn peers_become_shared_sets_of_their_pods() {
        let t = run(&[
            policy(
                "shop/from-web",
                json!({"podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                             "ports": [{"port": 5432}]}]}),
            ),
            policy(
                "shop/from-team-b",
                json!({"podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}),
            ),
            policy(
                "shop/web-too",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]},
                            {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "monitor"}}}]}]}),
            ),
        ]);
        let db = spec_of(&t, "db-1").unwrap().ingress.as_ref().unwrap();
        assert_eq!(db.len(), 2, "the union of both policies: {db:?}");
        let by = |source: &str| {
            db.iter()
                .find(|r| r.source.as_deref() == Some(source))
                .unwrap()
        };
        let (from_web, from_team_b) = (by("shop/from-web"), by("shop/from-team-b"));
        assert_eq!(
            members(&t, &from_web.set),
            ["10.0.0.1/32", "10.0.1.1/32"],
            "web pods of shop, not the host-network one"
        );
        assert_eq!(
            (from_web.protocol, from_web.ports),
            (Some(Protocol::TCP), Some(Ports { lo: 5432, hi: 5432 }))
        );
        assert_eq!(
            members(&t, &from_team_b.set),
            ["10.0.1.9/32"],
            "every pod of namespaces labelled team=b"
        );
        assert_eq!(from_team_b.ports, None, "no ports: all of them");
        let web = spec_of(&t, "web-1").unwrap().ingress.as_ref().unwrap();
        assert_eq!(
            web[0].set, from_web.set,
            "one peer, one set, whichever policy names it"
        );
        assert_eq!(
            members(&t, &web[1].set),
            ["10.0.1.9/32"],
            "namespace AND pod selector"
        );
        assert!(spec_of(&t, "web-1").unwrap().egress.is_none());
    }

    #[test]
    fn an_ipv6_ip_block_is_a_set_of_its_family() {
        let t = run(&[policy(
            "shop/web-in6",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "fd00:db8::/48", "except": ["fd00:db8:9::/64"]}}]}]}),
        )]);
        let web = spec_of(&t, "web-1").unwrap().ingress.as_ref().unwrap();
        assert_eq!(
            members(&t, &web[0].set),
            ["fd00:db8::/48", "!fd00:db8:9::/64"]
        );
        assert!(t.skipped.is_empty(), "{:?}", t.skipped);
    }

    #[test]
    fn ip_blocks_named_ports_and_ranges() {
        let t = run(&[
            policy(
                "shop/web-in",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "172.16.0.0/16", "except": ["172.16.9.0/24"]}}],
                             "ports": [{"port": "http"}, {"port": "sql"}, {"port": 9000, "endPort": 9100, "protocol": "UDP"}]}]}),
            ),
            policy(
                "shop/db-out",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]},
                           {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 5000, "protocol": "SCTP"}]}]}),
            ),
        ]);
        let web = spec_of(&t, "web-1").unwrap().ingress.as_ref().unwrap();
        assert_eq!(
            web.len(),
            2,
            "http resolved on web-1 itself; web-1 has no port sql: {web:?}"
        );
        assert_eq!(
            members(&t, &web[0].set),
            ["172.16.0.0/16", "!172.16.9.0/24"]
        );
        assert_eq!(web[0].ports, Some(Ports { lo: 8080, hi: 8080 }));
        assert_eq!(
            (web[1].protocol, web[1].ports),
            (Some(Protocol::UDP), Some(Ports { lo: 9000, hi: 9100 }))
        );
        let db = spec_of(&t, "db-1").unwrap();
        assert!(db.ingress.is_none(), "an egress-only policy");
        let out = db.egress.as_ref().unwrap();
        assert_eq!(
            members(&t, &out[0].set),
            ["10.0.0.1/32@tcp/8080", "10.0.1.1/32@tcp/8081"],
            "each web pod on its own http"
        );
        assert_eq!(out[0].ports, None, "the set carries the ports");
        assert_eq!(
            (out[1].set.as_ref(), out[1].cidr, out[1].ports),
            (None, None, Some(Ports { lo: 53, hi: 53 })),
            "any destination"
        );
        assert_eq!(out.len(), 2, "SCTP is not enforced yet: {out:?}");
        assert_eq!(
            t.skipped,
            [Skipped {
                policy: "shop/db-out".into(),
                reason: "protocol SCTP: not enforced yet, stays denied".into()
            }]
        );
    }
}
