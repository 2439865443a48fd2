//! Named sets of addresses that policy rules refer to (`set:` in a rule),
//! shared by every endpoint of a node: a NetworkPolicy peer that selects
//! five thousand pods is one set, changed member by member as pods come
//! and go, not five thousand rules in each selected endpoint's list.
//!
//! ```yaml
//! web-pods:                    # a set's name
//!   - cidr: 10.244.1.7/32
//!   - cidr: 10.244.2.9/32
//!     port: tcp/8080           # this address on this port only (a named
//!                              # port resolved for that pod)
//! outside:
//!   - cidr: 0.0.0.0/0
//!   - cidr: 10.0.0.0/8
//!     except: true             # in a member above, but not in the set
//! ```
//! An address is in a set when its longest matching member says so: an
//! `except` member takes out what a shorter member put in, and a member
//! with a port, for that port, overrides one of the same address without.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::protocol::Protocol;

/// The longest set name: the programs' maps key sets by number, and the
/// names live beside them in fixed records.
pub const MAX_SET_NAME: usize = 63;

/// Every set of a node, by name.
pub type IpSets = BTreeMap<String, Vec<SetMember>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMember {
    pub cidr: IpNetwork,
    /// In a shorter member, but out of the set (an ipBlock's `except`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub except: bool,
    /// Only this port of the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SetPort>,
}

impl SetMember {
    /// All of `cidr`.
    pub fn cidr(cidr: IpNetwork) -> SetMember {
        SetMember {
            cidr,
            except: false,
            port: None,
        }
    }
}

/// A member's port: `tcp/8080`, `udp/53`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetPort {
    pub protocol: Protocol,
    pub port: u16,
}

impl Serialize for SetPort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}/{}", self.protocol, self.port))
    }
}

impl<'de> Deserialize<'de> for SetPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("port {text:?}: use \"tcp/8080\""));
        let (protocol, port) = text.split_once('/').ok_or_else(bad)?;
        Ok(SetPort {
            protocol: Protocol::from_name(protocol).ok_or_else(bad)?,
            port: port.parse().map_err(|_| bad())?,
        })
    }
}

/// What is wrong with a set, named by the set and its member's place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("set {name:?}: a name has 1 to {MAX_SET_NAME} bytes")]
    Name { name: String },
    #[error("set {set}[{index}]: a member with a port is one address (/32 or /128)")]
    PortOnANetwork { set: String, index: usize },
    #[error("set {set}[{index}]: a port is of tcp, udp or sctp")]
    PortProtocol { set: String, index: usize },
    #[error("set {set}[{index}]: an except member has no port")]
    ExceptWithPort { set: String, index: usize },
}

/// Checks a set name.
pub fn check_name(name: &str) -> Result<(), SetError> {
    if name.is_empty() || name.len() > MAX_SET_NAME {
        return Err(SetError::Name {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Checks every set.
pub fn validate(sets: &IpSets) -> Result<(), SetError> {
    for (name, members) in sets {
        check_name(name)?;
        for (index, m) in members.iter().enumerate() {
            let at = || (name.clone(), index);
            if let Some(port) = m.port {
                let (set, index) = at();
                if m.except {
                    return Err(SetError::ExceptWithPort { set, index });
                }
                if m.cidr.prefix() != max_prefix(m.cidr) {
                    return Err(SetError::PortOnANetwork { set, index });
                }
                if ![Protocol::TCP, Protocol::UDP, Protocol::SCTP].contains(&port.protocol) {
                    return Err(SetError::PortProtocol { set, index });
                }
            }
        }
    }
    Ok(())
}

fn max_prefix(cidr: IpNetwork) -> u8 {
    match cidr {
        IpNetwork::V4(_) => 32,
        IpNetwork::V6(_) => 128,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_parse_and_bad_members_are_named() {
        let sets: IpSets = serde_json::from_str(
            r#"{"web": [{"cidr": "10.244.1.7/32", "port": "tcp/8080"}, {"cidr": "10.244.2.0/24"}],
                "out": [{"cidr": "0.0.0.0/0"}, {"cidr": "10.0.0.0/8", "except": true}]}"#,
        )
        .unwrap();
        validate(&sets).unwrap();
        assert_eq!(
            sets["web"][0].port,
            Some(SetPort {
                protocol: Protocol::TCP,
                port: 8080
            })
        );
        assert!(sets["out"][1].except);
        let json = serde_json::to_value(&sets["web"]).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{"cidr": "10.244.1.7/32", "port": "tcp/8080"}, {"cidr": "10.244.2.0/24"}])
        );
        let err = |json: &str| {
            let sets: IpSets = serde_json::from_str(json).unwrap();
            validate(&sets).unwrap_err().to_string()
        };
        assert_eq!(
            err(r#"{"s": [{"cidr": "10.0.0.0/8"}, {"cidr": "10.1.0.0/16", "port": "tcp/80"}]}"#),
            "set s[1]: a member with a port is one address (/32 or /128)"
        );
        assert_eq!(
            err(r#"{"s": [{"cidr": "10.1.0.1/32", "port": "icmp/0"}]}"#),
            "set s[0]: a port is of tcp, udp or sctp"
        );
        assert_eq!(
            err(r#"{"s": [{"cidr": "10.1.0.1/32", "port": "udp/53", "except": true}]}"#),
            "set s[0]: an except member has no port"
        );
        assert!(err(&format!(r#"{{"{}": []}}"#, "x".repeat(64))).contains("1 to 63 bytes"));
        for bad in [
            r#"{"s": [{"cidr": "10.1.0.1/32", "port": "8080"}]}"#,
            r#"{"s": [{"cidr": "10.1.0.1/32", "port": "tcp/http"}]}"#,
            r#"{"s": [{"cidr": "10.1.0.1/32", "ports": "tcp/80"}]}"#,
        ] {
            assert!(serde_json::from_str::<IpSets>(bad).is_err(), "{bad}");
        }
    }
}
