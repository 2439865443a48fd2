//! Node checks before anything is written: each failure is one line that
//! says what is wrong and what to do.

use std::path::Path;

use anyhow::{Result, bail};
use margay_ebpf::node::{Node, Settings};

use crate::verb;

/// The oldest kernel the programs run on: ring buffers (5.8) and
/// `bpf_redirect_peer` (5.10).
pub const MIN_KERNEL: (u32, u32) = (5, 10);

/// `(major, minor)` of a release string such as `6.18.44-fc-v669`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

pub fn kernel() -> Result<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_string();
    match parse_release(&release) {
        Some(v) if v >= MIN_KERNEL => Ok(format!("kernel {release}: ok")),
        Some(_) => bail!(
            "kernel {release} is older than {}.{}, which the eBPF dataplane needs; upgrade the node or use MARGAY_DATAPLANE=linux",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        ),
        None => bail!("kernel release {release:?} cannot be parsed"),
    }
}

/// bpffs mounted (mounting it when possible), then the programs loaded and
/// pinned, so the first pod's ADD only attaches.
pub fn dataplane(root: &Path, settings: &Settings) -> Result<String> {
    match Node::open(root, settings) {
        Ok(_) => Ok(format!(
            "eBPF programs loaded and pinned under {}: ok",
            root.display()
        )),
        Err(e) => bail!("the eBPF dataplane cannot be set up: {e}"),
    }
}

/// Puts `from_net` on every interface whose name matches `pattern` (the
/// conflist's `bpf_data_ifaces`) and takes it off data interfaces that no
/// longer match. Pods' veths and loopback never count.
pub fn data_ifaces(
    root: &Path,
    settings: &Settings,
    pattern: Option<&regex::Regex>,
    mode: margay_ebpf::cluster::ExternalMode,
    dry_run: bool,
) -> Result<Vec<String>> {
    let names: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo" && !n.starts_with("mrg"))
        .collect();
    let wanted: Vec<&String> = names
        .iter()
        .filter(|n| pattern.is_some_and(|p| p.is_match(n)))
        .collect();
    let mut log = Vec::new();
    if let Some(p) = pattern
        && wanted.is_empty()
    {
        log.push(format!(
            "warning: bpf_data_ifaces {p} matches no interface here; NodePorts stay closed"
        ));
    }
    let current: Vec<String> = if root.exists() {
        margay_ebpf::nodeport::data_ifaces(root)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| d.ifname)
            .collect()
    } else {
        Vec::new()
    };
    let mut detached = false;
    for stale in current.iter().filter(|n| !wanted.contains(n)) {
        if !dry_run {
            margay_ebpf::nodeport::detach(root, stale)?;
            detached = true;
        }
        log.push(format!(
            "{stale} is no longer a data interface: from_net detached"
        ));
    }
    if dry_run {
        log.extend(
            wanted
                .iter()
                .map(|n| format!("would attach from_net to {n}")),
        );
        if !wanted.is_empty() {
            log.push(format!(
                "would set up {} for other nodes ({mode:?})",
                margay_ebpf::cluster::TUNNEL_DEVICE
            ));
        }
        return Ok(log);
    }
    if wanted.is_empty() {
        if detached {
            refresh_node_ports(root, &mut log)?;
        }
        return Ok(log);
    }
    let mut node = Node::open(root, settings)?;
    let wanted: Vec<String> = wanted.into_iter().cloned().collect();
    let done =
        margay_ebpf::nodeport::attach_data_ifaces(&mut node, root, &wanted, mode).map_err(|e| {
            use margay_ebpf::nodeport::DataIfacesError as Failed;
            match e {
                Failed::Iface { .. } => anyhow::anyhow!("bpf_data_ifaces: {e}"),
                Failed::Tunnel { .. } => anyhow::anyhow!("bpf_external_service_mode: {e}"),
                Failed::NodePorts { .. } => {
                    anyhow::anyhow!("opening the NodePorts of applied services: {e}")
                }
            }
        })?;
    for (name, addrs) in &done.ifaces {
        let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        log.push(format!(
            "from_net attached to {name}: NodePorts answer on {}",
            addrs.join(", ")
        ));
    }
    log.push(format!(
        "{} up: backends on other nodes are reached in {mode:?} mode",
        margay_ebpf::cluster::TUNNEL_DEVICE
    ));
    log_node_ports(&done.node_ports, &mut log);
    Ok(log)
}

/// Takes the node's own programs off a node leaving the bpf dataplane:
/// `from_net` off every data interface and the tunnel device removed, so
/// NodePorts and traffic from other nodes go to the kernel's stack (and
/// kube-proxy) again. Pods keep theirs until they are re-created.
pub fn node_programs_off(root: &Path, dry_run: bool) -> Result<Vec<String>> {
    let mut log = Vec::new();
    for name in margay_ebpf::nodeport::data_ifaces(root)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| d.ifname)
    {
        if !dry_run {
            margay_ebpf::nodeport::detach(root, &name)?;
        }
        log.push(format!(
            "{} from_net on {name}",
            verb(dry_run, "detached", "would detach")
        ));
    }
    let tunnel = margay_ebpf::cluster::TUNNEL_DEVICE;
    if margay_ebpf::cluster::tunnel_settings(root).is_ok_and(|c| c.tunnel_ifindex != 0) {
        if !dry_run {
            margay_ebpf::cluster::teardown_tunnel(root)?;
        }
        log.push(format!(
            "{} {tunnel}",
            verb(dry_run, "removed", "would remove")
        ));
    }
    Ok(log)
}

/// Opens (and closes) the NodePorts of services already applied on the
/// node's data interfaces as they are now.
fn refresh_node_ports(root: &Path, log: &mut Vec<String>) -> anyhow::Result<()> {
    let report = margay_ebpf::service::refresh_node_ports(root)
        .map_err(|e| anyhow::anyhow!("opening the NodePorts of applied services: {e}"))?;
    log_node_ports(&report, log);
    Ok(())
}

fn log_node_ports(report: &margay_ebpf::service::ApplyReport, log: &mut Vec<String>) {
    if report.added + report.removed > 0 {
        log.push(format!(
            "services already applied: {} NodePort frontends opened, {} closed",
            report.added, report.removed
        ));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn releases_parse() {
        assert_eq!(super::parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(super::parse_release("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(super::parse_release("x"), None);
    }
}
