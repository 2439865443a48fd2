//! An endpoint's policy as operators write it (a small declarative schema,
//! YAML or JSON) and as the agent translates NetworkPolicy into.
//!
//! ```yaml
//! ingress:                 # absent: allow all; [] denies all
//!   - action: allow
//!     cidr: 10.244.0.0/16  # IPv4 or IPv6; default: any address of both
//!     protocol: tcp        # any (default) | tcp | udp | icmp | icmpv6 | sctp | <number>
//!     ports: "80-443"      # tcp/udp only; default all
//! egress:
//!   - action: deny
//!     cidr: 10.0.0.0/8
//!   - action: allow
//!     set: web-pods        # instead of a CIDR: the peer is in this set
//!     source: shop/web     # who wrote it (the agent: a NetworkPolicy)
//! ```
//! Rules are evaluated in order; the first match decides; a direction with
//! rules denies what none allows, of either family: a direction whose rules
//! are all IPv4 denies all IPv6.

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::protocol::Protocol;

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
    /// None: any address, of both families (unless `set` says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<IpNetwork>,
    /// The peer is in this set of the node (`crate::ip_set`); not with
    /// `cidr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    /// None: any protocol.
    #[serde(default, with = "rule_protocol")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Ports>,
    /// Where the rule comes from (the agent: a NetworkPolicy's
    /// `namespace/name`), shown with it and with the drops it explains;
    /// not with `cidr` (the programs' CIDR rules have no room for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// A rule's protocol: `any`, `tcp`, `udp`, `icmp`, `icmpv6` (names in any
/// case but `any`'s) or an IP protocol number (0: any); written as `any`,
/// the name, or the number.
mod rule_protocol {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::protocol::Protocol;

    pub fn serialize<S: Serializer>(p: &Option<Protocol>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            None => s.serialize_str("any"),
            Some(p) => p.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Protocol>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Number(u8),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Protocol::from_number(n)),
            Raw::Name(name) if name == "any" => Ok(None),
            Raw::Name(name) => Protocol::from_name(&name).map(Some).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "protocol {name:?}: use any, tcp, udp, icmp, icmpv6, sctp or a number"
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

/// What is wrong with a rule, named by its place (`ingress[2]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{direction}[{index}]: ports apply only to tcp and udp")]
    PortsNeedTcpOrUdp {
        direction: &'static str,
        index: usize,
    },
    #[error("{direction}[{index}]: a rule has a cidr or a set, not both")]
    CidrAndSet {
        direction: &'static str,
        index: usize,
    },
    #[error(
        "{direction}[{index}]: a rule with a cidr has no source (only rules with a set \
         or with neither keep one): drop the source, or put the cidr in a set"
    )]
    CidrAndSource {
        direction: &'static str,
        index: usize,
    },
    #[error("{direction}[{index}]: {error}")]
    Set {
        direction: &'static str,
        index: usize,
        error: crate::ip_set::SetError,
    },
    #[error("{direction}[{index}]: a source has at most {MAX_SOURCE} bytes")]
    Source {
        direction: &'static str,
        index: usize,
    },
}

/// The longest `source` a rule keeps.
pub const MAX_SOURCE: usize = 63;

impl Rule {
    /// Checks this rule, rule `index` of `direction` (which errors name).
    pub fn check(&self, direction: &'static str, index: usize) -> Result<(), RuleError> {
        let tcp_or_udp = matches!(self.protocol, Some(Protocol::TCP | Protocol::UDP));
        if self.ports.is_some() && !tcp_or_udp {
            return Err(RuleError::PortsNeedTcpOrUdp { direction, index });
        }
        if let Some(set) = &self.set {
            if self.cidr.is_some() {
                return Err(RuleError::CidrAndSet { direction, index });
            }
            crate::ip_set::check_name(set).map_err(|error| RuleError::Set {
                direction,
                index,
                error,
            })?;
        }
        if let Some(source) = &self.source {
            if self.cidr.is_some() {
                return Err(RuleError::CidrAndSource { direction, index });
            }
            if source.len() > MAX_SOURCE {
                return Err(RuleError::Source { direction, index });
            }
        }
        Ok(())
    }
}

impl PolicySpec {
    /// Checks every rule of both directions.
    pub fn validate(&self) -> Result<(), RuleError> {
        for (direction, rules) in [("ingress", &self.ingress), ("egress", &self.egress)] {
            for (index, rule) in rules.iter().flatten().enumerate() {
                rule.check(direction, index)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Vec<Rule> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_schema_parses_and_refuses_typos() {
        let r = rules(
            r#"[{"action": "allow", "cidr": "10.1.0.0/16", "protocol": "tcp", "ports": "80-443"},
                {"action": "deny", "protocol": 1},
                {"action": "allow", "ports": 53, "protocol": "UDP"},
                {"action": "allow", "cidr": "fd00::/16", "protocol": "icmpv6"},
                {"action": "deny", "protocol": 0},
                {"action": "deny", "protocol": "any"},
                {"action": "allow", "protocol": 47}]"#,
        );
        assert_eq!(r[0].cidr, Some("10.1.0.0/16".parse().unwrap()));
        assert_eq!(r[0].ports, Some(Ports { lo: 80, hi: 443 }));
        assert_eq!(r[1].protocol, Some(Protocol::ICMP));
        assert_eq!(r[2].protocol, Some(Protocol::UDP));
        assert_eq!(r[2].ports, Some(Ports { lo: 53, hi: 53 }));
        assert_eq!(r[3].protocol, Some(Protocol::ICMPV6));
        assert_eq!((r[4].protocol, r[5].protocol), (None, None));
        assert_eq!(r[6].protocol.map(Protocol::number), Some(47));
        for bad in [
            r#"[{"action": "maybe"}]"#,
            r#"[{"action": "allow", "protocol": "sctpx"}]"#,
            r#"[{"action": "allow", "protocol": "ANY"}]"#,
            r#"[{"action": "allow", "protocol": 256}]"#,
            r#"[{"action": "allow", "ports": "90-80"}]"#,
            r#"[{"action": "allow", "ports": "http"}]"#,
            r#"[{"action": "allow", "cidr": "10.0.0.0/40"}]"#,
            r#"[{"action": "allow", "port": "80"}]"#,
        ] {
            assert!(serde_json::from_str::<Vec<Rule>>(bad).is_err(), "{bad}");
        }
        let unknown =
            serde_json::from_str::<Vec<Rule>>(r#"[{"action": "allow", "protocol": "gre"}]"#)
                .unwrap_err()
                .to_string();
        assert!(
            unknown
                .contains(r#"protocol "gre": use any, tcp, udp, icmp, icmpv6, sctp or a number"#),
            "{unknown}"
        );
    }

    #[test]
    fn written_with_names_any_and_numbers() {
        let r = rules(
            r#"[{"action": "allow", "cidr": "10.1.0.0/16", "protocol": "TCP", "ports": "80-443"},
                {"action": "deny"},
                {"action": "allow", "protocol": 47, "ports": 53}]"#,
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"action": "allow", "cidr": "10.1.0.0/16", "protocol": "tcp", "ports": "80-443"},
                {"action": "deny", "protocol": "any"},
                {"action": "allow", "protocol": 47, "ports": "53"}
            ])
        );
        assert_eq!(serde_json::from_value::<Vec<Rule>>(json).unwrap(), r);
        let spec = PolicySpec {
            ingress: Some(vec![]),
            egress: None,
        };
        assert_eq!(serde_json::to_string(&spec).unwrap(), r#"{"ingress":[]}"#);
    }

    #[test]
    fn ports_need_tcp_or_udp() {
        let spec: PolicySpec = serde_json::from_str(
            r#"{"ingress": [{"action": "allow", "protocol": "tcp", "ports": 80}],
                "egress": [{"action": "allow"}, {"action": "deny", "protocol": "icmp", "ports": "1"}]}"#,
        )
        .unwrap();
        let err = spec.validate().unwrap_err();
        assert_eq!(
            err,
            RuleError::PortsNeedTcpOrUdp {
                direction: "egress",
                index: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "egress[1]: ports apply only to tcp and udp"
        );
        let any: Vec<Rule> = rules(r#"[{"action": "allow", "ports": 80}]"#);
        assert!(
            any[0].check("ingress", 0).is_err(),
            "any protocol has no ports"
        );
    }

    #[test]
    fn a_source_is_refused_beside_a_cidr_rather_than_dropped() {
        let spec: PolicySpec = serde_json::from_str(
            r#"{"ingress": [{"action": "allow", "set": "web", "source": "shop/web"},
                            {"action": "deny", "source": "shop/deny-all"}],
                "egress": [{"action": "allow", "cidr": "10.0.0.0/8", "source": "shop/out"}]}"#,
        )
        .unwrap();
        let err = spec.validate().unwrap_err();
        assert_eq!(
            err,
            RuleError::CidrAndSource {
                direction: "egress",
                index: 0
            }
        );
        assert!(
            err.to_string()
                .starts_with("egress[0]: a rule with a cidr has no source"),
            "{err}"
        );
    }
}
