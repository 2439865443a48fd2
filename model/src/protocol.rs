//! The IP protocol a service is on or a policy rule matches, by its IANA
//! number. Services and policy share this one type; each schema that names
//! a protocol says which spellings it accepts (services: `tcp` or `udp`;
//! rules: also `icmp`, `icmpv6`, `any` and numbers), and both write the
//! name when there is one, else the number.

use serde::{Serialize, Serializer};

/// An IP protocol, never 0 (which the programs read as "any protocol";
/// a rule for any protocol has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(u8);

impl Protocol {
    pub const ICMP: Protocol = Protocol(1);
    pub const TCP: Protocol = Protocol(6);
    pub const UDP: Protocol = Protocol(17);
    pub const ICMPV6: Protocol = Protocol(58);
    pub const SCTP: Protocol = Protocol(132);

    /// The protocols with a name, in lower case as files spell them.
    const NAMED: [(&'static str, Protocol); 5] = [
        ("tcp", Protocol::TCP),
        ("udp", Protocol::UDP),
        ("icmp", Protocol::ICMP),
        ("icmpv6", Protocol::ICMPV6),
        ("sctp", Protocol::SCTP),
    ];

    /// Protocol number `n`; None for 0.
    pub const fn from_number(n: u8) -> Option<Protocol> {
        if n == 0 { None } else { Some(Protocol(n)) }
    }

    pub const fn number(self) -> u8 {
        self.0
    }

    /// `tcp`, `udp`, `icmp`, `icmpv6` or `sctp`, in any case.
    pub fn from_name(name: &str) -> Option<Protocol> {
        Self::NAMED
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, p)| *p)
    }

    /// Its lower-case name, for those that have one.
    pub fn name(self) -> Option<&'static str> {
        Self::NAMED
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(n, _)| *n)
    }
}

/// The name, else the number.
impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

/// The name, else the number.
impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(name) => s.serialize_str(name),
            None => s.serialize_u8(self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_protocols_write_their_name_others_their_number() {
        assert_eq!(serde_json::to_string(&Protocol::TCP).unwrap(), r#""tcp""#);
        assert_eq!(
            serde_json::to_string(&Protocol::ICMPV6).unwrap(),
            r#""icmpv6""#
        );
        let gre = Protocol::from_number(47).unwrap();
        assert_eq!(serde_json::to_string(&gre).unwrap(), "47");
        assert_eq!(gre.to_string(), "47");
        assert_eq!(Protocol::SCTP.to_string(), "sctp");
        assert_eq!(Protocol::UDP.to_string(), "udp");
    }

    #[test]
    fn names_and_numbers_agree() {
        assert_eq!(Protocol::from_name("TCP"), Some(Protocol::TCP));
        assert_eq!(Protocol::from_name("icmp"), Some(Protocol::ICMP));
        assert_eq!(Protocol::from_name("SCTP"), Some(Protocol::SCTP));
        assert_eq!(Protocol::from_name("gre"), None);
        assert_eq!(Protocol::from_number(17), Some(Protocol::UDP));
        assert_eq!(Protocol::from_number(0), None, "0 is any, not a protocol");
        assert_eq!(Protocol::UDP.number(), 17);
    }
}
