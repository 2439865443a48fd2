//! The registry writes an endpoint whole or not at all: a registration
//! that fails leaves the maps as it found them, whether or not its caller
//! undoes anything (the plugin's rollback finds an endpoint by its
//! `endpoints` entry, which a failed registration may never have written).

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use margay_ebpf::abi::{Endpoint, Endpoint6, MAX_ENDPOINTS};
use margay_ebpf::node::{Node, Settings};
use margay_ebpf::{maps, registry};

/// A BPF root of the test's own under /sys/fs/bpf, removed with all its
/// pins (and the node lock loading made for it) when dropped.
struct PrivateRoot {
    path: PathBuf,
}

impl PrivateRoot {
    fn new(test: &str) -> PrivateRoot {
        PrivateRoot {
            path: PathBuf::from("/sys/fs/bpf").join(format!("mge-{test}-{}", std::process::id())),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        // Where `paths::lock_path` puts the root's lock (it cannot live on
        // bpffs): the root with each character but ASCII letters and digits
        // made an underscore.
        let flat: String = self
            .path
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let _ = std::fs::remove_file(format!("/run/margay/locks/{flat}.lock"));
    }
}

/// True when the test may go on: it loads programs, which needs root. In
/// CI (`CI` set) running without root is a broken setup, not a skip.
fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, and CI is set: CI must run the suite as root"
    );
    eprintln!("\n*** SKIPPED {test}: needs root (BPF). Run the suite as root. ***\n");
    false
}

/// Small maps: the test needs none of their room.
fn small() -> Settings {
    Settings {
        conntrack_size: 1024,
        service_frontends: 64,
        service_backends: 64,
        ip_set_entries: 64,
        ..Settings::default()
    }
}

fn endpoint(ifindex: u32, ip: &str) -> Endpoint {
    Endpoint::new(ifindex, "mrgtest", ip.parse().unwrap(), [2, 0, 0, 0, 0, 5])
}

#[test]
fn a_registration_that_fails_leaves_no_ipv6_entry_behind() {
    if !root_or_skip("a_registration_that_fails_leaves_no_ipv6_entry_behind") {
        return;
    }
    let root = PrivateRoot::new("registry");
    let r = root.path();
    Node::open(r, &small()).unwrap();
    // Every counters slot held by an interface that exists (the loopback),
    // so that none can be taken back: the slot claim fails, after the
    // IPv6 address is written.
    let mut slots = maps::counter_slots(r).unwrap();
    for slot in 1..=MAX_ENDPOINTS {
        slots.insert(slot, 1, 0).unwrap();
    }
    let ipv6: Ipv6Addr = "fd00:244::5".parse().unwrap();

    let fresh = endpoint(4242, "10.244.0.5");
    let e = registry::register(r, &fresh, Some(ipv6)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "map counter_slots: every counters slot is taken (more endpoints than the node holds)"
    );
    assert_eq!(
        registry::ipv6_of(r, fresh.ifindex).unwrap(),
        None,
        "the failed registration left its endpoints6 entry"
    );
    assert!(maps::endpoints(r).unwrap().get(&4242, 0).is_err());
    assert!(maps::endpoints_by_ip(r).unwrap().get(&fresh.ip, 0).is_err());

    // An entry that was there before (an earlier ADD's) is put back as it
    // was, whether the failed registration overwrote or removed it.
    let earlier: Ipv6Addr = "fd00:244::6".parse().unwrap();
    maps::endpoints6(r)
        .unwrap()
        .insert(4243, Endpoint6::new(earlier), 0)
        .unwrap();
    let retried = endpoint(4243, "10.244.0.6");
    registry::register(r, &retried, Some(ipv6)).unwrap_err();
    assert_eq!(registry::ipv6_of(r, 4243).unwrap(), Some(earlier));
    registry::register(r, &retried, None).unwrap_err();
    assert_eq!(registry::ipv6_of(r, 4243).unwrap(), Some(earlier));

    // With a slot free, the same registration goes through whole.
    slots.remove(&MAX_ENDPOINTS).unwrap();
    registry::register(r, &fresh, Some(ipv6)).unwrap();
    assert_eq!(registry::ipv6_of(r, fresh.ifindex).unwrap(), Some(ipv6));
    assert_eq!(
        maps::endpoints_by_ip(r).unwrap().get(&fresh.ip, 0).unwrap(),
        fresh.ifindex
    );
}
