//! Policy (`margay_model::policy`) as the programs read it
//! (`abi::Policy`, `abi::Policy6`), and the endpoint's entries holding it.
//!
//! The programs keep each family's rules in a list of its own (a rule
//! without a CIDR is in both), in the operator's order: rules of different
//! families never match the same packet, so the split changes no verdict.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use margay_model::policy::{Action, PolicySpec, Ports, Rule, RuleError};
use margay_model::protocol::Protocol;

use crate::abi::{
    self, DIR_EGRESS, DIR_INGRESS, MAX_POLICY_RULES, POLICY_ALLOW, POLICY_DENY, PolicyKey,
    PolicyRule, PolicyRule6, RULE_F_ANY_FAMILY, RULE_F_SET,
};
use crate::error::DataplaneError;
use crate::ip_set::{IpSetTable, NameTable};
use crate::maps;

/// Why a direction's rules cannot be put in the programs' form, naming
/// the direction (`ingress`, `egress`) and, for one rule, its index there.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// A rule is refused by `margay_model::policy::Rule::check` (ports
    /// without TCP or UDP, a CIDR with a set or a source, a bad set name or
    /// source).
    #[error(transparent)]
    Invalid(#[from] RuleError),
    /// A family's list would hold more than [`MAX_POLICY_RULES`] rules (a
    /// rule without a CIDR is in both lists).
    #[error("{direction}: {count} rules, at most {MAX_POLICY_RULES} are supported")]
    TooManyRules {
        /// `ingress` or `egress`.
        direction: &'static str,
        /// The direction's rules, as given.
        count: usize,
    },
    /// A rule names a set the node does not hold (apply the sets first):
    /// refused, never read as "any address".
    #[error("{direction}[{index}]: set {set:?} is not applied on this node")]
    UnknownSet {
        /// `ingress` or `egress`.
        direction: &'static str,
        /// The rule's index in its direction.
        index: usize,
        /// The set's name.
        set: String,
    },
    /// A rule's source could not be given a number in `policy_sources`
    /// (the map is full, or cannot be written).
    #[error("{direction}[{index}]: recording its source: {error}")]
    Source {
        /// `ingress` or `egress`.
        direction: &'static str,
        /// The rule's index in its direction.
        index: usize,
        /// The map's error, as text.
        error: String,
    },
}

/// The numbers rules name sets and sources by: the node's sets, and its
/// sources (handed out as rules name them).
pub struct RuleNumbers<'a> {
    /// The node's sets, which a rule's set is numbered by; `None` refuses
    /// every rule with a set ([`PolicyError::UnknownSet`]).
    pub sets: Option<&'a IpSetTable>,
    /// The rule sources, numbered as rules name them; `None` keeps no
    /// source (rules are written with source 0).
    pub sources: Option<&'a mut SourceTable>,
}

impl RuleNumbers<'_> {
    /// None: neither (rules with sets are refused, sources not kept).
    pub fn none() -> RuleNumbers<'static> {
        RuleNumbers {
            sets: None,
            sources: None,
        }
    }

    /// The set's and the source's number of rule `index` (0: none).
    fn of(
        &mut self,
        direction: &'static str,
        index: usize,
        rule: &Rule,
    ) -> Result<(u32, u32), PolicyError> {
        let set = match &rule.set {
            None => 0,
            Some(name) => {
                self.sets
                    .and_then(|s| s.id(name))
                    .ok_or_else(|| PolicyError::UnknownSet {
                        direction,
                        index,
                        set: name.clone(),
                    })?
            }
        };
        let source = match (&rule.source, self.sources.as_deref_mut()) {
            (Some(name), Some(sources)) => {
                sources.names.id_of(name).map_err(|e| PolicyError::Source {
                    direction,
                    index,
                    error: e.to_string(),
                })?
            }
            _ => 0,
        };
        Ok((set, source))
    }
}

/// What set and source numbers stand for, for showing rules.
#[derive(Debug, Default)]
pub struct RuleNames {
    /// Sets' names by number (`ip_set_names`).
    pub sets: HashMap<u32, String>,
    /// Rule sources' names by number (`policy_sources`).
    pub sources: HashMap<u32, String>,
}

impl RuleNames {
    /// The node's.
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Map`] naming `ip_set_names` or `policy_sources`
    /// when it cannot be opened or read.
    pub fn read(root: &Path) -> Result<RuleNames, DataplaneError> {
        let read = |map: maps::Names| -> Result<HashMap<u32, String>, DataplaneError> {
            map.iter()
                .map(|kv| kv.map(|(id, r)| (id, r.text())).map_err(map.error()))
                .collect()
        };
        Ok(RuleNames {
            sets: read(maps::ip_set_names(root)?)?,
            sources: read(maps::policy_sources(root)?)?,
        })
    }

    /// Set `id`'s name (`#id` when unknown); None for 0, any peer.
    fn set(&self, id: u32) -> Option<String> {
        name_of(&self.sets, id)
    }

    /// Source `id`'s name (`#id` when unknown); None for 0, no source.
    fn source(&self, id: u32) -> Option<String> {
        name_of(&self.sources, id)
    }
}

fn name_of(names: &HashMap<u32, String>, id: u32) -> Option<String> {
    (id != 0).then(|| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}")))
}

/// The sources rules name (`policy_sources`), by number.
pub struct SourceTable {
    names: NameTable,
}

impl SourceTable {
    /// Opens the rule sources of `root` and reads their numbers, so that a
    /// source keeps its number across writers.
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Map`] naming `policy_sources` when it cannot be
    /// opened or read.
    pub fn open(root: &Path) -> Result<SourceTable, DataplaneError> {
        Ok(SourceTable {
            names: NameTable::open(maps::policy_sources(root)?, abi::MAX_POLICY_SOURCES)?,
        })
    }

    /// Forgets every source whose name `keep` refuses; returns how many.
    /// Their numbers may be handed out again, so only for sources no rule
    /// names any more.
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Map`] naming `policy_sources` when a name cannot be
    /// removed; those removed before stay removed.
    pub fn retire(&mut self, keep: &dyn Fn(&str) -> bool) -> Result<usize, DataplaneError> {
        let gone: Vec<String> = self
            .names
            .names()
            .filter(|(n, _)| !keep(n))
            .map(|(n, _)| n.to_string())
            .collect();
        for name in &gone {
            self.names.forget(name)?;
        }
        Ok(gone.len())
    }
}

/// The programs' form of one direction's rules: its IPv4 and its IPv6
/// list. A rule with a set, or with a source (never with a CIDR: the
/// check refuses that, as a CIDR rule's form has no room for a source), is
/// numbered by `numbers` and is in both lists, as the set may hold both
/// families.
///
/// # Errors
///
/// [`PolicyError::Invalid`] when a rule is refused by its check;
/// [`PolicyError::TooManyRules`] when a family's list would overflow;
/// [`PolicyError::UnknownSet`] when a rule names a set `numbers` does not
/// hold; [`PolicyError::Source`] when a source cannot be numbered.
pub fn compile(
    direction: &'static str,
    rules: &[Rule],
    numbers: &mut RuleNumbers,
) -> Result<(abi::Policy, abi::Policy6), PolicyError> {
    let mut v4 = abi::Policy::default();
    let mut v6 = abi::Policy6::default();
    for (index, rule) in rules.iter().enumerate() {
        rule.check(direction, index)?;
        // 0: any protocol.
        let proto = rule.protocol.map_or(0, Protocol::number);
        let ports = rule.ports.unwrap_or(Ports {
            lo: 0,
            hi: u16::MAX,
        });
        let action = match rule.action {
            Action::Allow => POLICY_ALLOW,
            Action::Deny => POLICY_DENY,
        };
        let flags = if rule.cidr.is_none() {
            RULE_F_ANY_FAMILY
        } else {
            0
        };
        let too_many = |_| PolicyError::TooManyRules {
            direction,
            count: rules.len(),
        };
        // A set, or any peer with its source named: numbers, not a CIDR.
        if rule.set.is_some() || rule.source.is_some() {
            let (set, source) = numbers.of(direction, index, rule)?;
            let (set, source) = (set.to_ne_bytes(), source.to_ne_bytes());
            let rule4 = PolicyRule {
                addr: set,
                mask: source,
                port_lo: ports.lo,
                port_hi: ports.hi,
                proto,
                action,
                flags: flags | RULE_F_SET,
                pad: 0,
            };
            let mut addr6 = [0u8; 16];
            addr6[..4].copy_from_slice(&set);
            let mut mask6 = [0u8; 16];
            mask6[..4].copy_from_slice(&source);
            let rule6 = PolicyRule6 {
                addr: addr6,
                mask: mask6,
                port_lo: ports.lo,
                port_hi: ports.hi,
                proto,
                action,
                flags: flags | RULE_F_SET,
                pad: 0,
            };
            append(&mut v4.rules, &mut v4.count, rule4).map_err(too_many)?;
            append(&mut v6.rules, &mut v6.count, rule6).map_err(too_many)?;
            continue;
        }
        let (cidr4, cidr6) = match rule.cidr {
            None => (
                Some(Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid")),
                Some(Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0).expect("/0 is valid")),
            ),
            Some(IpNetwork::V4(n)) => (Some(n), None),
            Some(IpNetwork::V6(n)) => (None, Some(n)),
        };
        if let Some(n) = cidr4 {
            let rule = PolicyRule {
                addr: n.network().octets(),
                mask: n.mask().octets(),
                port_lo: ports.lo,
                port_hi: ports.hi,
                proto,
                action,
                flags,
                pad: 0,
            };
            append(&mut v4.rules, &mut v4.count, rule).map_err(too_many)?;
        }
        if let Some(n) = cidr6 {
            let rule = PolicyRule6 {
                addr: n.network().octets(),
                mask: n.mask().octets(),
                port_lo: ports.lo,
                port_hi: ports.hi,
                proto,
                action,
                flags,
                pad: 0,
            };
            append(&mut v6.rules, &mut v6.count, rule).map_err(too_many)?;
        }
    }
    Ok((v4, v6))
}

/// Puts `rule` after the `count` rules of `rules`; Err when they are full.
fn append<T>(rules: &mut [T], count: &mut u32, rule: T) -> Result<(), ()> {
    *rules.get_mut(*count as usize).ok_or(())? = rule;
    *count += 1;
    Ok(())
}

/// One compiled rule, of either family, as the operator wrote it.
fn rule_of(cidr: Option<IpNetwork>, action: u8, proto: u8, (lo, hi): (u16, u16)) -> Rule {
    Rule {
        action: if action == POLICY_ALLOW {
            Action::Allow
        } else {
            Action::Deny
        },
        cidr,
        protocol: Protocol::from_number(proto),
        ports: (lo != 0 || hi != u16::MAX).then_some(Ports { lo, hi }),
        set: None,
        source: None,
    }
}

/// The operator's form of the programs' rules (for `policy show`). A rule
/// written without a CIDR is in both lists and shown once; between two
/// such rules, IPv4's rules come before IPv6's, which may reorder rules of
/// the two families but never changes a verdict (no packet matches both).
pub fn decompile(v4: &abi::Policy, v6: &abi::Policy6, names: &RuleNames) -> Vec<Rule> {
    let any = |flags: u8| flags & RULE_F_ANY_FAMILY != 0;
    // A set rule: its numbers, by name.
    let numbered = |flags: u8, set: [u8; 4], source: [u8; 4], action, proto, ports| {
        (flags & RULE_F_SET != 0).then(|| Rule {
            set: names.set(u32::from_ne_bytes(set)),
            source: names.source(u32::from_ne_bytes(source)),
            ..rule_of(None, action, proto, ports)
        })
    };
    let mut v4_rules = v4.rules[..(v4.count as usize).min(MAX_POLICY_RULES)]
        .iter()
        .peekable();
    let mut v6_rules = v6.rules[..(v6.count as usize).min(MAX_POLICY_RULES)]
        .iter()
        .peekable();
    let rule4 = |r: &PolicyRule| {
        if let Some(rule) = numbered(
            r.flags,
            r.addr,
            r.mask,
            r.action,
            r.proto,
            (r.port_lo, r.port_hi),
        ) {
            return rule;
        }
        let cidr = Ipv4Network::with_netmask(Ipv4Addr::from(r.addr), Ipv4Addr::from(r.mask))
            .unwrap_or_else(|_| Ipv4Network::from(Ipv4Addr::UNSPECIFIED));
        let cidr = (!any(r.flags)).then_some(IpNetwork::V4(cidr));
        rule_of(cidr, r.action, r.proto, (r.port_lo, r.port_hi))
    };
    let rule6 = |r: &PolicyRule6| {
        let word = |b: &[u8; 16]| [b[0], b[1], b[2], b[3]];
        if let Some(rule) = numbered(
            r.flags,
            word(&r.addr),
            word(&r.mask),
            r.action,
            r.proto,
            (r.port_lo, r.port_hi),
        ) {
            return rule;
        }
        let prefix = r.mask.iter().map(|b| b.count_ones()).sum::<u32>() as u8;
        let cidr = Ipv6Network::new(Ipv6Addr::from(r.addr), prefix)
            .unwrap_or_else(|_| Ipv6Network::from(Ipv6Addr::UNSPECIFIED));
        rule_of(
            Some(IpNetwork::V6(cidr)),
            r.action,
            r.proto,
            (r.port_lo, r.port_hi),
        )
    };
    let mut out = Vec::new();
    loop {
        out.extend(std::iter::from_fn(|| v4_rules.next_if(|r| !any(r.flags))).map(rule4));
        out.extend(std::iter::from_fn(|| v6_rules.next_if(|r| !any(r.flags))).map(rule6));
        // Both lists are at the same CIDR-less rule now, or both ended.
        match (v4_rules.next(), v6_rules.next()) {
            (Some(r), _) => out.push(rule4(r)),
            (None, Some(r)) => out.push(rule6(r)),
            (None, None) => return out,
        }
    }
}

/// Replaces the endpoint's policy. Each direction is one map update per
/// family, in force for the next new flow; established flows keep going.
/// The IPv6 list is written before the entry that makes the direction a
/// policy's, and removed after it, so that no moment judges IPv6 by a
/// stale list (a direction with a policy and no IPv6 list denies IPv6).
///
/// ```no_run
/// # use margay_ebpf::policy;
/// # use margay_model::policy::PolicySpec;
/// // Ingress: TCP 80 from 10.244.0.0/16 only. Egress: no policy, all allowed.
/// let spec: PolicySpec = serde_json::from_str(
///     r#"{"ingress": [{"action": "allow", "cidr": "10.244.0.0/16", "protocol": "tcp", "ports": 80}]}"#,
/// )?;
/// policy::set("/sys/fs/bpf/margay".as_ref(), 42, &spec)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`DataplaneError::Policy`] when a rule is refused ([`compile`]'s
/// errors): then neither direction is written. [`DataplaneError::Map`] when
/// `ip_sets`, `ip_sets6`, `ip_set_names` or `policy_sources` cannot be
/// opened or read (each only when a rule names a set or a source), or
/// `policies` or `policies6` cannot be opened or written.
pub fn set(root: &Path, ifindex: u32, spec: &PolicySpec) -> Result<(), DataplaneError> {
    let rules = || {
        [&spec.ingress, &spec.egress]
            .into_iter()
            .flatten()
            .flatten()
    };
    let sets = if rules().any(|r| r.set.is_some()) {
        Some(IpSetTable::open(root)?)
    } else {
        None
    };
    let mut sources = if rules().any(|r| r.source.is_some()) {
        Some(SourceTable::open(root)?)
    } else {
        None
    };
    let mut numbers = RuleNumbers {
        sets: sets.as_ref(),
        sources: sources.as_mut(),
    };
    set_numbered(root, ifindex, spec, &mut numbers)
}

/// [`set`] with the node's sets and sources as the caller keeps them (a
/// writer that sets many endpoints' policies reads them once).
///
/// # Errors
///
/// As [`set`]'s: [`DataplaneError::Policy`] when a rule is refused (then
/// nothing is written); [`DataplaneError::Map`]
/// naming `policies` or `policies6` when it cannot be opened or written.
pub fn set_numbered(
    root: &Path,
    ifindex: u32,
    spec: &PolicySpec,
    numbers: &mut RuleNumbers,
) -> Result<(), DataplaneError> {
    let mut policies = maps::policies(root)?;
    let mut policies6 = maps::policies6(root)?;
    // Both directions compiled before either is written: a refused rule
    // leaves the endpoint's policy as it was.
    let mut compiled = Vec::with_capacity(2);
    for (direction, name, rules) in [
        (DIR_INGRESS, "ingress", &spec.ingress),
        (DIR_EGRESS, "egress", &spec.egress),
    ] {
        let rules = rules
            .as_ref()
            .map(|rules| compile(name, rules, numbers))
            .transpose()?;
        compiled.push((PolicyKey { ifindex, direction }, rules));
    }
    for (key, rules) in compiled {
        match rules {
            Some((v4, v6)) => {
                policies6.insert(key, v6, 0).map_err(policies6.error())?;
                policies.insert(key, v4, 0).map_err(policies.error())?;
            }
            None => {
                let _ = policies.remove(&key);
                let _ = policies6.remove(&key);
            }
        }
    }
    Ok(())
}

/// The endpoint's policy as set, in the operator's form ([`decompile`]): a
/// direction without an entry is `None`, no policy.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `policies`, `policies6`, `ip_set_names`
/// or `policy_sources` when it cannot be opened or read.
pub fn get(root: &Path, ifindex: u32) -> Result<PolicySpec, DataplaneError> {
    let policies = maps::policies(root)?;
    let policies6 = maps::policies6(root)?;
    let names = RuleNames::read(root)?;
    let read = |direction| {
        let key = PolicyKey { ifindex, direction };
        let v4 = policies.get(&key, 0).ok()?;
        let v6 = policies6.get(&key, 0).unwrap_or_default();
        Some(decompile(&v4, &v6, &names))
    };
    Ok(PolicySpec {
        ingress: read(DIR_INGRESS),
        egress: read(DIR_EGRESS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Vec<Rule> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn compiles_and_round_trips() {
        let r = rules(
            r#"[{"action": "allow", "cidr": "10.1.0.0/16", "protocol": "tcp", "ports": "80-443"},
                {"action": "deny", "protocol": 1},
                {"action": "allow", "ports": 53, "protocol": "udp"}]"#,
        );
        let (p, v6) = compile("ingress", &r, &mut RuleNumbers::none()).unwrap();
        assert_eq!(p.count, 3);
        assert_eq!(v6.count, 2, "the rules without a CIDR are IPv6's too");
        assert_eq!(p.rules[0].addr, [10, 1, 0, 0]);
        assert_eq!(p.rules[0].mask, [255, 255, 0, 0]);
        assert_eq!((p.rules[0].port_lo, p.rules[0].port_hi), (80, 443));
        assert_eq!(p.rules[1].proto, 1);
        assert_eq!((p.rules[1].port_lo, p.rules[1].port_hi), (0, 65535));
        assert_eq!(p.rules[1].mask, [0; 4]);
        assert_eq!(p.rules[1].flags, RULE_F_ANY_FAMILY);
        assert_eq!(decompile(&p, &v6, &RuleNames::default()), r);
    }

    #[test]
    fn ipv6_rules_go_to_their_own_list_in_order() {
        let r = rules(
            r#"[{"action": "deny", "cidr": "fd00:1::/64", "protocol": "tcp", "ports": 22},
                {"action": "allow", "cidr": "10.0.0.0/8"},
                {"action": "allow", "cidr": "fd00::/16", "protocol": "icmpv6"},
                {"action": "allow", "protocol": "udp"}]"#,
        );
        let (v4, v6) = compile("egress", &r, &mut RuleNumbers::none()).unwrap();
        assert_eq!(v4.count, 2);
        assert_eq!(v6.count, 3);
        assert_eq!(v6.rules[0].addr[..4], [0xfd, 0, 0, 1]);
        assert_eq!(v6.rules[0].mask, {
            let mut m = [0u8; 16];
            m[..8].fill(0xff);
            m
        });
        assert_eq!((v6.rules[0].action, v6.rules[0].port_lo), (POLICY_DENY, 22));
        assert_eq!((v6.rules[1].proto, v6.rules[2].proto), (58, 17));
        assert_eq!(v6.rules[2].mask, [0; 16], "no CIDR: any address");
        // Shown: up to the CIDR-less rule, IPv4's then IPv6's; that rule once.
        let shown = decompile(&v4, &v6, &RuleNames::default());
        assert_eq!(
            shown,
            vec![r[1].clone(), r[0].clone(), r[2].clone(), r[3].clone()]
        );
        // The same verdicts: the set shown compiles to the same lists.
        let (v4_again, v6_again) = compile("egress", &shown, &mut RuleNumbers::none()).unwrap();
        assert!(v4_again.rules == v4.rules, "the same IPv4 list");
        assert!(v6_again.rules == v6.rules, "the same IPv6 list");
        // A CIDR-less rule keeps its place among the IPv6 rules.
        let r = rules(
            r#"[{"action": "deny", "cidr": "fd00::/8"}, {"action": "allow"},
                {"action": "deny", "cidr": "10.0.0.0/8"}]"#,
        );
        let (v4, v6) = compile("egress", &r, &mut RuleNumbers::none()).unwrap();
        assert_eq!(decompile(&v4, &v6, &RuleNames::default()), r);
    }

    #[test]
    fn bad_rules_are_named() {
        let e = compile(
            "egress",
            &rules(
                r#"[{"action": "allow"}, {"action": "deny", "protocol": "icmp", "ports": "1"}]"#,
            ),
            &mut RuleNumbers::none(),
        );
        assert_eq!(
            e.unwrap_err(),
            PolicyError::Invalid(RuleError::PortsNeedTcpOrUdp {
                direction: "egress",
                index: 1
            })
        );
        assert_eq!(
            compile(
                "ingress",
                &rules(r#"[{"action": "allow", "cidr": "10.0.0.0/8", "source": "ns/p"}]"#),
                &mut RuleNumbers::none(),
            )
            .unwrap_err(),
            PolicyError::Invalid(RuleError::CidrAndSource {
                direction: "ingress",
                index: 0
            }),
            "a CIDR rule's source is refused, not dropped"
        );
        let many: Vec<Rule> = (0..257)
            .map(|_| rules(r#"[{"action": "allow"}]"#).remove(0))
            .collect();
        assert!(matches!(
            compile("ingress", &many, &mut RuleNumbers::none()),
            Err(PolicyError::TooManyRules { count: 257, .. })
        ));
    }
}
