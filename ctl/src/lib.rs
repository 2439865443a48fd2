//! What `margayctl` shows and does, as functions returning data; the
//! binary parses arguments and prints.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use margay_ebpf::abi::{DROP_REASONS, Endpoint};
use margay_ebpf::node::{self, Node, PROGRAMS};
use margay_ebpf::paths::program_path;
use margay_ebpf::{DataplaneError, inspect, policy, registry};
use margay_model::policy::{PolicySpec, Rule};
use serde::Serialize;

/// An endpoint as `margayctl endpoints` lists it.
#[derive(Debug, Serialize)]
pub struct EndpointRow {
    pub ifname: String,
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, when it has one.
    pub ipv6: Option<Ipv6Addr>,
    pub mac: String,
    /// Margay programs attached right now (from the kernel, not the pins).
    pub programs: Vec<&'static str>,
    pub policy: PolicySpec,
}

/// Pinned program IDs of this root, by name.
fn pinned_program_ids(root: &Path) -> Vec<(&'static str, u32)> {
    PROGRAMS
        .iter()
        .filter_map(|(name, _)| {
            let info = aya::programs::ProgramInfo::from_pin(program_path(root, name)).ok()?;
            Some((*name, info.id()))
        })
        .collect()
}

pub fn endpoints(root: &Path) -> Result<Vec<EndpointRow>, DataplaneError> {
    let ids = pinned_program_ids(root);
    let mut rows = Vec::new();
    for ep in registry::list(root)? {
        let ifname = ep.ifname();
        let programs = PROGRAMS
            .iter()
            .zip(&ids)
            .filter(|((_, kind), (_, id))| node::attached(&ifname, *kind).contains(id))
            .map(|((name, _), _)| *name)
            .collect();
        rows.push(EndpointRow {
            policy: policy::get(root, ep.ifindex)?,
            ifname,
            ifindex: ep.ifindex,
            ip: ep.ipv4(),
            ipv6: registry::ipv6_of(root, ep.ifindex)?,
            mac: margay_conf::result::format_mac(&ep.mac),
            programs,
        });
    }
    rows.sort_by_key(|r| r.ip);
    Ok(rows)
}

/// Finds an endpoint by host veth name, ifindex or pod IP (of either
/// family).
pub fn resolve(root: &Path, which: &str) -> Result<Endpoint, String> {
    let all = registry::list(root).map_err(|e| e.to_string())?;
    let ip = which.parse::<IpAddr>().ok();
    all.into_iter()
        .find(|e| {
            e.ifname() == which
                || e.ifindex.to_string() == which
                || match ip {
                    Some(IpAddr::V4(ip)) => ip == e.ipv4(),
                    Some(IpAddr::V6(ip)) => {
                        registry::ipv6_of(root, e.ifindex).is_ok_and(|a| a == Some(ip))
                    }
                    None => false,
                }
        })
        .ok_or_else(|| format!("no endpoint {which:?} (give a host veth name, ifindex or pod IP)"))
}

#[derive(Debug, Serialize)]
pub struct CounterRow {
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
    /// Drop reason -> count, non-zero only.
    pub drops: std::collections::BTreeMap<&'static str, u64>,
}

pub fn counters(root: &Path, only: Option<&Endpoint>) -> Result<Vec<CounterRow>, DataplaneError> {
    let eps = match only {
        Some(e) => vec![*e],
        None => registry::list(root)?,
    };
    eps.iter()
        .map(|ep| {
            let c = inspect::counters(root, ep.ifindex)?;
            Ok(CounterRow {
                ifname: ep.ifname(),
                ip: ep.ipv4(),
                from_pod_packets: c.packets[0],
                from_pod_bytes: c.bytes[0],
                to_pod_packets: c.packets[1],
                to_pod_bytes: c.bytes[1],
                drops: DROP_REASONS
                    .iter()
                    .zip(c.drops)
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| (*r, n))
                    .collect(),
            })
        })
        .collect()
}

/// Reads a YAML or JSON file (JSON is YAML) of the schema `T`: a policy,
/// a service set, a peer set.
pub fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Detaches and unregisters every endpoint of the root: what switching a
/// node back to the `linux` dataplane needs for pods already running.
pub fn detach_all(root: &Path) -> Result<Vec<String>, DataplaneError> {
    let names: Vec<String> = registry::list(root)?.iter().map(Endpoint::ifname).collect();
    for name in &names {
        Node::detach(name)?;
        registry::unregister(root, name)?;
    }
    Ok(names)
}

/// "allow-all" / "3 rules" / "deny-all" for one direction.
pub fn policy_summary(rules: &Option<Vec<Rule>>) -> String {
    match rules {
        None => "allow-all".into(),
        Some(r) if r.is_empty() => "deny-all".into(),
        Some(r) => format!("{} rule{}", r.len(), if r.len() == 1 { "" } else { "s" }),
    }
}
