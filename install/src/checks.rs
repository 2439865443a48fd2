//! Node checks before anything is written: each failure is one line that
//! says what is wrong and what to do.

use std::path::Path;

use anyhow::{Result, bail};
use margay_ebpf::node::{Node, Settings};

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

#[cfg(test)]
mod tests {
    #[test]
    fn releases_parse() {
        assert_eq!(super::parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(super::parse_release("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(super::parse_release("x"), None);
    }
}
