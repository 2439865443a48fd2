//! Services as the operator (or the agent, from the Kubernetes API)
//! declares them.
//!
//! ```yaml
//! services:
//!   - name: default/web          # namespace/name (and :port-name), for people
//!     vip: 10.96.0.10            # the ClusterIP (IPv4 or IPv6: a dual-stack
//!                                # Service is a service per family)
//!     port: 80
//!     protocol: tcp              # tcp (default) | udp
//!     backends: ["10.244.0.5:8080", "10.244.1.7:8080"]
//!     affinity_timeout: 10800    # sessionAffinity ClientIP, seconds; absent: none
//!     node_port: 30080           # also on every node address (margayctl node attach)
//!     external_ips: [203.0.113.7]  # also here (externalIPs, LoadBalancer ingress)
//!     external_traffic_policy: local  # cluster (default) | local: NodePort and
//!                                     # external IPs to this node's backends only
//!     internal_traffic_policy: local  # cluster (default) | local: the ClusterIP too
//! ```
//!
//! Each service is one ClusterIP frontend, plus a NodePort frontend per
//! node address of its family when it has a `node_port`, plus one per
//! external IP. Its backends and external IPs are of its ClusterIP's family.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Deserializer, Serialize};

use crate::protocol::Protocol;

/// What `margayctl service apply -f` reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub services: Vec<ServiceSpec>,
}

/// One frontend and its backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    /// One of [`PROTOCOLS`].
    #[serde(default = "tcp", deserialize_with = "service_protocol")]
    pub protocol: Protocol,
    #[serde(default)]
    pub backends: Vec<SocketAddr>,
    /// ClientIP session affinity, for this many seconds since last use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    /// Also reachable at this port on every node address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// Addresses outside the cluster's that also answer on `port`
    /// (`externalIPs`, a LoadBalancer's ingress IPs): external clients
    /// reach them through a node, as they reach NodePorts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<IpAddr>,
    /// Which backends NodePort and external-IP traffic may reach.
    #[serde(default, skip_serializing_if = "is_default")]
    pub external_traffic_policy: TrafficPolicy,
    /// Which backends ClusterIP traffic may reach.
    #[serde(default, skip_serializing_if = "is_default")]
    pub internal_traffic_policy: TrafficPolicy,
}

/// `externalTrafficPolicy` or `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficPolicy {
    /// Any backend.
    #[default]
    Cluster,
    /// This node's backends only; a node without one refuses.
    Local,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The protocols a service can be on.
pub const PROTOCOLS: [Protocol; 2] = [Protocol::TCP, Protocol::UDP];

fn tcp() -> Protocol {
    Protocol::TCP
}

/// A service's protocol as files have always named it: `tcp` or `udp`, in
/// lower case.
fn service_protocol<'de, D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
    let name = String::deserialize(d)?;
    PROTOCOLS
        .into_iter()
        .find(|p| p.name() == Some(name.as_str()))
        .ok_or_else(|| serde::de::Error::unknown_variant(&name, &["tcp", "udp"]))
}

/// Longest name kept (the map's field, with its terminating zero).
pub const MAX_NAME: usize = 63;
/// Backends one service can have (slot ordinals are 16 bits).
pub const MAX_BACKENDS: usize = u16::MAX as usize;
/// Kubernetes' own bound on `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// An address, port and protocol a service answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.addr, self.port),
            self.protocol
        )
    }
}

/// What is wrong with one service, by the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceFault {
    #[error("name: must be 1..={MAX_NAME} bytes")]
    Name,
    #[error("vip: {0} cannot be a service address")]
    Vip(IpAddr),
    #[error("port: 0 is not a port")]
    Port,
    #[error("protocol: {0} is neither tcp nor udp")]
    Protocol(Protocol),
    #[error("node_port: 0 is not a port")]
    NodePort,
    #[error(
        "external_traffic_policy: local applies to NodePorts and external IPs; set node_port or external_ips"
    )]
    LocalWithoutExternalFrontend,
    #[error("external_ips[{index}]: {addr} cannot be a service address")]
    ExternalIp { index: usize, addr: IpAddr },
    #[error("external_ips[{index}]: {addr} is not of the vip's family")]
    ExternalIpFamily { index: usize, addr: IpAddr },
    #[error("backends: {0} is more than {MAX_BACKENDS}")]
    TooManyBackends(usize),
    #[error("backends[{index}]: {backend} is not a reachable endpoint")]
    UnreachableBackend { index: usize, backend: SocketAddr },
    #[error("backends[{index}]: {backend} is not of the vip's family")]
    BackendFamily { index: usize, backend: SocketAddr },
    #[error("backends[{index}]: {backend} is listed twice")]
    DuplicateBackend { index: usize, backend: SocketAddr },
    #[error("affinity_timeout: {0} is outside 1..={MAX_AFFINITY_TIMEOUT} seconds")]
    AffinityTimeout(u32),
}

/// What is wrong with a set of services.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceSpecError {
    #[error("services[{index}] ({name}): {fault}")]
    Invalid {
        index: usize,
        name: String,
        fault: ServiceFault,
    },
    #[error("services[{first}] and services[{second}] both claim frontend {frontend}")]
    Duplicate {
        first: usize,
        second: usize,
        frontend: String,
    },
}

impl ServiceSpec {
    /// A service without backends, NodePort, external IPs or affinity,
    /// its traffic policies `cluster`: fill in the rest with
    /// `ServiceSpec { backends, ..ServiceSpec::new(..) }`.
    pub fn new(name: impl Into<String>, vip: IpAddr, port: u16, protocol: Protocol) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            vip,
            port,
            protocol,
            backends: Vec::new(),
            affinity_timeout: None,
            node_port: None,
            external_ips: Vec::new(),
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
        }
    }

    /// Its ClusterIP frontend.
    pub fn cluster_ip(&self) -> Frontend {
        Frontend {
            addr: self.vip,
            port: self.port,
            protocol: self.protocol,
        }
    }

    /// Its external-IP frontends.
    pub fn external_frontends(&self) -> impl Iterator<Item = Frontend> + '_ {
        self.external_ips.iter().map(|&addr| Frontend {
            addr,
            port: self.port,
            protocol: self.protocol,
        })
    }

    /// Its NodePort frontends on those of the node's addresses
    /// (`node_addrs`) of its own family.
    pub fn node_port_frontends<'a>(
        &'a self,
        node_addrs: &'a [IpAddr],
    ) -> impl Iterator<Item = Frontend> + 'a {
        self.node_port.into_iter().flat_map(move |port| {
            node_addrs
                .iter()
                .filter(|a| a.is_ipv6() == self.vip.is_ipv6())
                .map(move |&addr| Frontend {
                    addr,
                    port,
                    protocol: self.protocol,
                })
        })
    }

    /// Checks this service alone.
    pub fn check(&self) -> Result<(), ServiceFault> {
        if self.name.is_empty() || self.name.len() > MAX_NAME {
            return Err(ServiceFault::Name);
        }
        if !can_be_frontend(self.vip) {
            return Err(ServiceFault::Vip(self.vip));
        }
        if let Some((index, &addr)) = self
            .external_ips
            .iter()
            .enumerate()
            .find(|(_, a)| !can_be_frontend(**a))
        {
            return Err(ServiceFault::ExternalIp { index, addr });
        }
        if let Some((index, &addr)) = self
            .external_ips
            .iter()
            .enumerate()
            .find(|(_, a)| a.is_ipv6() != self.vip.is_ipv6())
        {
            return Err(ServiceFault::ExternalIpFamily { index, addr });
        }
        if self.port == 0 {
            return Err(ServiceFault::Port);
        }
        if !PROTOCOLS.contains(&self.protocol) {
            return Err(ServiceFault::Protocol(self.protocol));
        }
        if self.node_port == Some(0) {
            return Err(ServiceFault::NodePort);
        }
        if self.node_port.is_none()
            && self.external_ips.is_empty()
            && self.external_traffic_policy == TrafficPolicy::Local
        {
            return Err(ServiceFault::LocalWithoutExternalFrontend);
        }
        if self.backends.len() > MAX_BACKENDS {
            return Err(ServiceFault::TooManyBackends(self.backends.len()));
        }
        let mut seen = HashSet::new();
        for (index, &backend) in self.backends.iter().enumerate() {
            if backend.ip().is_unspecified() || backend.port() == 0 {
                return Err(ServiceFault::UnreachableBackend { index, backend });
            }
            if backend.is_ipv6() != self.vip.is_ipv6() {
                return Err(ServiceFault::BackendFamily { index, backend });
            }
            if !seen.insert(backend) {
                return Err(ServiceFault::DuplicateBackend { index, backend });
            }
        }
        if let Some(t) = self.affinity_timeout
            && !(1..=MAX_AFFINITY_TIMEOUT).contains(&t)
        {
            return Err(ServiceFault::AffinityTimeout(t));
        }
        Ok(())
    }
}

fn can_be_frontend(addr: IpAddr) -> bool {
    let broadcast = match addr {
        IpAddr::V4(a) => a.is_broadcast(),
        IpAddr::V6(_) => false,
    };
    !(addr.is_unspecified() || broadcast || addr.is_multicast())
}

/// Checks a whole set: every service valid, no ClusterIP or external
/// frontend or NodePort claimed twice (a NodePort once per family: a
/// dual-stack Service's two services share theirs).
pub fn validate(specs: &[ServiceSpec]) -> Result<(), ServiceSpecError> {
    let mut frontends: HashMap<Frontend, usize> = HashMap::new();
    let mut node_ports: HashMap<(u16, Protocol, bool), usize> = HashMap::new();
    for (index, spec) in specs.iter().enumerate() {
        spec.check().map_err(|fault| ServiceSpecError::Invalid {
            index,
            name: spec.name.clone(),
            fault,
        })?;
        for frontend in std::iter::once(spec.cluster_ip()).chain(spec.external_frontends()) {
            if let Some(first) = frontends.insert(frontend, index) {
                return Err(ServiceSpecError::Duplicate {
                    first,
                    second: index,
                    frontend: frontend.to_string(),
                });
            }
        }
        if let Some(port) = spec.node_port
            && let Some(first) = node_ports.insert((port, spec.protocol, spec.vip.is_ipv6()), index)
        {
            return Err(ServiceSpecError::Duplicate {
                first,
                second: index,
                frontend: format!("node port {port}/{}", spec.protocol),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn b(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn spec(name: &str, port: u16, backends: &[&str]) -> ServiceSpec {
        ServiceSpec {
            backends: backends.iter().map(|s| b(s)).collect(),
            ..ServiceSpec::new(name, ip("10.96.0.1"), port, Protocol::TCP)
        }
    }

    fn spec6(name: &str, port: u16, backends: &[&str]) -> ServiceSpec {
        ServiceSpec {
            vip: ip("fd00:96::1"),
            ..spec(name, port, backends)
        }
    }

    #[test]
    fn an_ipv6_service_has_ipv6_backends_and_external_ips_and_its_own_node_port() {
        let err = |specs: &[ServiceSpec]| validate(specs).unwrap_err().to_string();
        validate(&[spec6("a", 80, &["[fd00:244::5]:8080"])]).expect("an IPv6 service");
        assert!(
            err(&[spec6("a", 80, &["[fd00:244::5]:8080", "10.244.0.5:8080"])])
                .contains("backends[1]: 10.244.0.5:8080 is not of the vip's family")
        );
        assert!(
            err(&[spec("a", 80, &["[fd00:244::5]:8080"])])
                .contains("backends[0]: [fd00:244::5]:8080 is not of the vip's family")
        );
        let mut external = spec6("a", 80, &[]);
        external.external_ips = vec![ip("2001:db8::7"), ip("203.0.113.7")];
        assert!(
            err(&[external]).contains("external_ips[1]: 203.0.113.7 is not of the vip's family")
        );
        assert!(err(&[spec6("a", 80, &["[::]:80"])]).contains("not a reachable endpoint"));
        let mut multicast = spec6("a", 80, &[]);
        multicast.vip = ip("ff02::1");
        assert!(err(&[multicast]).contains("vip: ff02::1"));
        // A dual-stack Service: a service per family, one NodePort.
        let (mut v4, mut v6) = (spec("a/v4", 80, &[]), spec6("a/v6", 80, &[]));
        v4.node_port = Some(30080);
        v6.node_port = Some(30080);
        validate(&[v4.clone(), v6]).expect("one NodePort, once per family");
        let mut other = spec("b", 81, &[]);
        other.node_port = Some(30080);
        assert!(err(&[v4, other]).contains("node port 30080/tcp"));
        assert_eq!(
            spec6("a", 80, &[]).cluster_ip().to_string(),
            "[fd00:96::1]:80/tcp"
        );
    }

    #[test]
    fn bad_services_are_named() {
        let err = |specs: &[ServiceSpec]| validate(specs).unwrap_err().to_string();
        assert!(err(&[spec("", 80, &[])]).contains("services[0] (): name"));
        assert!(err(&[spec("a", 0, &[])]).contains("port: 0"));
        assert!(err(&[spec("a", 80, &["1.2.3.4:0"])]).contains("backends[0]"));
        assert!(err(&[spec("a", 80, &["1.2.3.4:5", "1.2.3.4:5"])]).contains("listed twice"));
        let mut affinity = spec("a", 80, &[]);
        affinity.affinity_timeout = Some(0);
        assert!(err(&[affinity]).contains("affinity_timeout"));
        let mut np = spec("a", 80, &[]);
        np.node_port = Some(0);
        assert!(err(&[np.clone()]).contains("node_port: 0"));
        np.node_port = None;
        np.external_traffic_policy = TrafficPolicy::Local;
        assert!(err(&[np]).contains("set node_port"));
        let mut external = spec("a", 80, &[]);
        external.external_ips = vec![ip("203.0.113.7"), Ipv4Addr::BROADCAST.into()];
        assert!(err(&[external.clone()]).contains("external_ips[1]: 255.255.255.255"));
        external.external_ips.pop();
        external.external_traffic_policy = TrafficPolicy::Local;
        validate(&[external.clone()]).expect("local applies to external IPs");
        let mut vip_is_external = spec("b", 80, &[]);
        vip_is_external.vip = ip("203.0.113.7");
        assert!(
            err(&[external, vip_is_external]).contains("both claim frontend 203.0.113.7:80/tcp")
        );
        let (mut a, mut c) = (spec("a", 80, &[]), spec("c", 81, &[]));
        a.node_port = Some(30080);
        c.node_port = Some(30080);
        assert!(err(&[a, c]).contains("node port 30080/tcp"));
        let dup = err(&[spec("a", 80, &[]), spec("b", 81, &[]), spec("c", 80, &[])]);
        assert!(dup.contains("services[0] and services[2]"), "{dup}");
        assert!(dup.contains("10.96.0.1:80/tcp"), "{dup}");
        let mut udp = spec("c", 80, &[]);
        udp.protocol = Protocol::UDP;
        validate(&[spec("a", 80, &[]), udp]).expect("tcp and udp on one port are two frontends");
    }

    #[test]
    fn a_service_is_tcp_or_udp() {
        let mut icmp = spec("a", 80, &[]);
        icmp.protocol = Protocol::ICMP;
        assert_eq!(
            validate(&[icmp]).unwrap_err(),
            ServiceSpecError::Invalid {
                index: 0,
                name: "a".into(),
                fault: ServiceFault::Protocol(Protocol::ICMP)
            }
        );
    }

    #[test]
    fn the_file_schema_parses_and_refuses_typos() {
        let file: ServiceFile = serde_json::from_str(
            r#"{"services": [{"name": "default/dns", "vip": "10.96.0.10", "port": 53,
                "protocol": "udp", "backends": ["10.244.0.2:53"], "affinity_timeout": 60}]}"#,
        )
        .unwrap();
        assert_eq!(file.services[0].protocol, Protocol::UDP);
        assert_eq!(file.services[0].backends, vec![b("10.244.0.2:53")]);
        assert!(
            serde_json::from_str::<ServiceFile>(
                r#"{"services": [{"name": "a", "vip": "10.96.0.10", "port": 53, "backend": []}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn the_protocol_is_tcp_unless_written_and_only_tcp_or_udp_in_lower_case() {
        let parse = |protocol: &str| {
            serde_json::from_str::<ServiceSpec>(&format!(
                r#"{{"name": "a", "vip": "10.96.0.10", "port": 53 {protocol}}}"#
            ))
            .map(|s| s.protocol)
            .map_err(|e| e.to_string())
        };
        assert_eq!(parse(""), Ok(Protocol::TCP));
        assert_eq!(parse(r#", "protocol": "tcp""#), Ok(Protocol::TCP));
        assert_eq!(parse(r#", "protocol": "udp""#), Ok(Protocol::UDP));
        for refused in [r#""TCP""#, r#""icmp""#, r#""any""#, "6"] {
            assert!(
                parse(&format!(r#", "protocol": {refused}"#)).is_err(),
                "{refused}"
            );
        }
        let unknown = parse(r#", "protocol": "sctp""#).unwrap_err();
        assert!(
            unknown.contains("unknown variant `sctp`, expected `tcp` or `udp`"),
            "{unknown}"
        );
    }

    #[test]
    fn written_as_read() {
        let mut s = spec("default/web", 80, &["10.244.0.5:8080"]);
        s.protocol = Protocol::UDP;
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "default/web", "vip": "10.96.0.1", "port": 80,
                "protocol": "udp", "backends": ["10.244.0.5:8080"]})
        );
        assert_eq!(serde_json::from_value::<ServiceSpec>(json).unwrap(), s);
        s.node_port = Some(30080);
        s.external_ips = vec![ip("203.0.113.7")];
        s.external_traffic_policy = TrafficPolicy::Local;
        s.internal_traffic_policy = TrafficPolicy::Local;
        s.affinity_timeout = Some(60);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["external_traffic_policy"], "local");
        assert_eq!(json["internal_traffic_policy"], "local");
        assert_eq!(json["external_ips"], serde_json::json!(["203.0.113.7"]));
        assert_eq!(serde_json::from_value::<ServiceSpec>(json).unwrap(), s);
    }
}
