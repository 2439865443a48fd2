//! Names Margay gives host-side objects, derived so that DEL and GC find
//! them again from the attachment alone, with no state kept.

use sha2::{Digest, Sha256};

/// Prefix of every host-side veth Margay creates.
pub const HOST_IFNAME_PREFIX: &str = "mrg";

/// `mrg` + 11 hex characters of SHA-256 over (network, container ID,
/// ifname): 14 characters, inside IFNAMSIZ, stable across versions and
/// collision-free in practice (44 bits).
pub fn host_ifname(network: &str, container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    for part in [network, container_id, ifname] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{HOST_IFNAME_PREFIX}{}", &hex[..11])
}

/// The host veth's `ifalias`, which records whose it is so GC can tell
/// from the link alone: `margay:<network>:<containerID>:<ifname>`. None of
/// the three parts can contain ':' (the spec's grammars exclude it).
pub fn alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("margay:{network}:{container_id}:{ifname}")
}

/// The (network, container ID, ifname) an alias names.
pub fn parse_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let mut parts = alias.strip_prefix("margay:")?.splitn(3, ':');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("net", "c1", "eth0");
        assert_eq!(a, host_ifname("net", "c1", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("mrg"));
        assert_ne!(a, host_ifname("net", "c1", "eth1"));
        assert_ne!(a, host_ifname("net2", "c1", "eth0"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(host_ifname("ab", "c", "x"), host_ifname("a", "bc", "x"));
        // Pinned: a DEL after an upgrade must find what an older ADD made.
        assert_eq!(
            host_ifname("k8s-pod-network", "abc123", "eth0"),
            host_ifname_pinned()
        );
    }

    fn host_ifname_pinned() -> String {
        let mut h = Sha256::new();
        h.update(b"k8s-pod-network\0abc123\0eth0\0");
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("mrg{}", &hex[..11])
    }

    #[test]
    fn alias_round_trips() {
        let a = alias("net.1", "Abc.def", "eth0");
        assert_eq!(parse_alias(&a), Some(("net.1", "Abc.def", "eth0")));
        assert_eq!(parse_alias("something-else"), None);
    }
}
