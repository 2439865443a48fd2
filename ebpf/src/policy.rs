//! Policy as operators write it (a small declarative schema, YAML or JSON)
//! and as the programs read it (`abi::Policy`).
//!
//! ```yaml
//! ingress:                 # absent: allow all; [] denies all
//!   - action: allow
//!     cidr: 10.244.0.0/16  # default 0.0.0.0/0
//!     protocol: tcp        # any (default) | tcp | udp | icmp | <number>
//!     ports: "80-443"      # tcp/udp only; default all
//! egress:
//!   - action: deny
//!     cidr: 10.0.0.0/8
//! ```
//! Rules are evaluated in order; the first match decides; a direction with
//! rules denies what none allows.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::abi::{
    self, DIR_EGRESS, DIR_INGRESS, MAX_POLICY_RULES, POLICY_ALLOW, POLICY_DENY, PolicyKey,
    PolicyRule,
};
use crate::error::DataplaneError;
use crate::maps;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<Rule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<Rule>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub action: Action,
    #[serde(default = "any_address")]
    pub cidr: Ipv4Network,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Ports>,
}

fn any_address() -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// `any`, `tcp`, `udp`, `icmp` or an IP protocol number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Any,
    Number(u8),
}

impl Protocol {
    const NAMED: [(&'static str, u8); 3] = [("tcp", 6), ("udp", 17), ("icmp", 1)];

    fn number(self) -> u8 {
        match self {
            Protocol::Any => 0,
            Protocol::Number(n) => n,
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::Any => s.serialize_str("any"),
            Protocol::Number(n) => match Self::NAMED.iter().find(|(_, v)| v == n) {
                Some((name, _)) => s.serialize_str(name),
                None => s.serialize_u8(*n),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Number(u8),
        }
        match Raw::deserialize(d)? {
            Raw::Number(0) => Ok(Protocol::Any),
            Raw::Number(n) => Ok(Protocol::Number(n)),
            Raw::Name(name) if name == "any" => Ok(Protocol::Any),
            Raw::Name(name) => Self::NAMED
                .iter()
                .find(|(n, _)| *n == name.to_lowercase())
                .map(|(_, v)| Protocol::Number(*v))
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "protocol {name:?}: use any, tcp, udp, icmp or a number"
                    ))
                }),
        }
    }
}

/// `80`, `"80"` or `"8000-8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

impl Serialize for Ports {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_str(&self.lo.to_string())
        } else {
            s.serialize_str(&format!("{}-{}", self.lo, self.hi))
        }
    }
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u16),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Number(n) => return Ok(Ports { lo: n, hi: n }),
            Raw::Text(t) => t,
        };
        let bad =
            || serde::de::Error::custom(format!("ports {text:?}: use \"80\" or \"8000-8080\""));
        let (lo, hi) = match text.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let p = text.trim().parse().map_err(|_| bad())?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(serde::de::Error::custom(format!(
                "ports {text:?}: the range is reversed"
            )));
        }
        Ok(Ports { lo, hi })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{direction}: {count} rules, at most {MAX_POLICY_RULES} are supported")]
    TooManyRules {
        direction: &'static str,
        count: usize,
    },
    #[error("{direction}[{index}]: ports apply only to tcp and udp")]
    PortsNeedTcpOrUdp {
        direction: &'static str,
        index: usize,
    },
}

/// The programs' form of one direction's rules.
pub fn compile(direction: &'static str, rules: &[Rule]) -> Result<abi::Policy, PolicyError> {
    if rules.len() > MAX_POLICY_RULES {
        return Err(PolicyError::TooManyRules {
            direction,
            count: rules.len(),
        });
    }
    let mut policy = abi::Policy {
        count: rules.len() as u32,
        ..abi::Policy::default()
    };
    for (index, (rule, slot)) in rules.iter().zip(policy.rules.iter_mut()).enumerate() {
        let proto = rule.protocol.number();
        if rule.ports.is_some() && proto != 6 && proto != 17 {
            return Err(PolicyError::PortsNeedTcpOrUdp { direction, index });
        }
        let ports = rule.ports.unwrap_or(Ports {
            lo: 0,
            hi: u16::MAX,
        });
        *slot = PolicyRule {
            addr: rule.cidr.network().octets(),
            mask: rule.cidr.mask().octets(),
            port_lo: ports.lo,
            port_hi: ports.hi,
            proto,
            action: match rule.action {
                Action::Allow => POLICY_ALLOW,
                Action::Deny => POLICY_DENY,
            },
            pad: [0; 2],
        };
    }
    Ok(policy)
}

/// The operator's form of the programs' rules (for `policy show`).
pub fn decompile(policy: &abi::Policy) -> Vec<Rule> {
    policy.rules[..(policy.count as usize).min(MAX_POLICY_RULES)]
        .iter()
        .map(|r| Rule {
            action: if r.action == POLICY_ALLOW {
                Action::Allow
            } else {
                Action::Deny
            },
            cidr: Ipv4Network::with_netmask(Ipv4Addr::from(r.addr), Ipv4Addr::from(r.mask))
                .unwrap_or_else(|_| any_address()),
            protocol: if r.proto == 0 {
                Protocol::Any
            } else {
                Protocol::Number(r.proto)
            },
            ports: (r.port_lo != 0 || r.port_hi != u16::MAX).then_some(Ports {
                lo: r.port_lo,
                hi: r.port_hi,
            }),
        })
        .collect()
}

/// Replaces the endpoint's policy. Each direction is one map update, in
/// force for the next new flow; established flows keep going.
pub fn set(root: &Path, ifindex: u32, spec: &PolicySpec) -> Result<(), DataplaneError> {
    let mut policies = maps::policies(root)?;
    for (direction, name, rules) in [
        (DIR_INGRESS, "ingress", &spec.ingress),
        (DIR_EGRESS, "egress", &spec.egress),
    ] {
        let key = PolicyKey { ifindex, direction };
        match rules {
            Some(rules) => {
                let compiled =
                    compile(name, rules).map_err(|e| DataplaneError::map("policies", e))?;
                policies
                    .insert(key, compiled, 0)
                    .map_err(|e| DataplaneError::map("policies", e))?;
            }
            None => {
                let _ = policies.remove(&key);
            }
        }
    }
    Ok(())
}

/// The endpoint's policy as set.
pub fn get(root: &Path, ifindex: u32) -> Result<PolicySpec, DataplaneError> {
    let policies = maps::policies(root)?;
    let read = |direction| {
        policies
            .get(&PolicyKey { ifindex, direction }, 0)
            .ok()
            .map(|p| decompile(&p))
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
        let p = compile("ingress", &r).unwrap();
        assert_eq!(p.count, 3);
        assert_eq!(p.rules[0].addr, [10, 1, 0, 0]);
        assert_eq!(p.rules[0].mask, [255, 255, 0, 0]);
        assert_eq!((p.rules[0].port_lo, p.rules[0].port_hi), (80, 443));
        assert_eq!(p.rules[1].proto, 1);
        assert_eq!((p.rules[1].port_lo, p.rules[1].port_hi), (0, 65535));
        assert_eq!(p.rules[1].mask, [0; 4]);
        assert_eq!(decompile(&p), r);
    }

    #[test]
    fn bad_rules_are_named() {
        let e = compile(
            "egress",
            &rules(
                r#"[{"action": "allow"}, {"action": "deny", "protocol": "icmp", "ports": "1"}]"#,
            ),
        );
        assert_eq!(
            e.unwrap_err(),
            PolicyError::PortsNeedTcpOrUdp {
                direction: "egress",
                index: 1
            }
        );
        let many: Vec<Rule> = (0..257)
            .map(|_| rules(r#"[{"action": "allow"}]"#).remove(0))
            .collect();
        assert!(matches!(
            compile("ingress", &many),
            Err(PolicyError::TooManyRules { count: 257, .. })
        ));
        for bad in [
            r#"[{"action": "maybe"}]"#,
            r#"[{"action": "allow", "protocol": "sctpx"}]"#,
            r#"[{"action": "allow", "ports": "90-80"}]"#,
            r#"[{"action": "allow", "cidr": "10.0.0.0/40"}]"#,
            r#"[{"action": "allow", "port": "80"}]"#,
        ] {
            assert!(serde_json::from_str::<Vec<Rule>>(bad).is_err(), "{bad}");
        }
    }
}
