//! Per-interface sysctls on the host veth.

use margay_conf::CniError;

/// (path under /proc/sys/net with `{if}` for the interface, value).
const IPV4: [(&str, &str); 3] = [
    // Answer the pod's ARP for its gateway 169.254.1.1 with our MAC.
    ("ipv4/conf/{if}/proxy_arp", "1"),
    // ...at once: the default 0.8 s proxy delay would stall every new pod.
    ("ipv4/neigh/{if}/proxy_delay", "0"),
    // Route what the pod sends, without touching the global switch.
    ("ipv4/conf/{if}/forwarding", "1"),
];
const IPV6: [(&str, &str); 2] = [
    ("ipv6/conf/{if}/forwarding", "1"),
    // The host side is a router for the pod; it must not learn from it.
    ("ipv6/conf/{if}/accept_ra", "0"),
];

fn path(template: &str, ifname: &str) -> String {
    format!("/proc/sys/net/{}", template.replace("{if}", ifname))
}

fn wanted(v6: bool) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    IPV4.iter().chain(IPV6.iter().filter(move |_| v6))
}

/// Writes the host veth's IPv4 sysctls, which every pod needs (ADD writes
/// them while IPAM allocates).
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) naming the first sysctl
/// that cannot be written, for instance because `ifname` does not exist.
pub fn apply_v4(ifname: &str) -> Result<(), CniError> {
    write(ifname, &IPV4)
}

/// Writes the host veth's IPv6 sysctls, for a pod that got an IPv6 address.
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) naming the first sysctl
/// that cannot be written, for instance because the host has IPv6 turned
/// off.
pub fn apply_v6(ifname: &str) -> Result<(), CniError> {
    write(ifname, &IPV6)
}

/// Turns duplicate address detection off on the host veth: its only
/// neighbour is the pod, and its link-local address, the pod's IPv6
/// gateway, would be unusable for the second detection takes, as would the
/// pod's first IPv6 packets. Best effort: without IPv6 on the host there is
/// nothing to detect.
pub fn skip_dad(ifname: &str) {
    let _ = std::fs::write(path("ipv6/conf/{if}/accept_dad", ifname), "0");
}

fn write(ifname: &str, wanted: &[(&str, &str)]) -> Result<(), CniError> {
    for (template, value) in wanted {
        let p = path(template, ifname);
        std::fs::write(&p, value)
            .map_err(|e| CniError::kernel(format!("cannot set {p} to {value}"), e))?;
    }
    Ok(())
}

/// The first sysctl that does not hold its value, as "path is x, want y".
pub fn verify(ifname: &str, v6: bool) -> Option<String> {
    wanted(v6).find_map(|(template, value)| {
        let p = path(template, ifname);
        match std::fs::read_to_string(&p) {
            Ok(v) if v.trim() == *value => None,
            Ok(v) => Some(format!("{p} is {}, want {value}", v.trim())),
            Err(e) => Some(format!("{p} cannot be read: {e}")),
        }
    })
}
