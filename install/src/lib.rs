//! `margay-install`: what the install-cni init container does on every
//! node. Render and validate the conflist, check the node (and preload the
//! eBPF programs), copy the binaries, write the conflist, all atomically;
//! or undo all of it. Returns what it did as lines; the binary prints them.
//!
//! - [`template`]: the conflist template and its placeholders;
//! - [`validate`]: the rendered conflist, including the hostPort rule;
//! - [`checks`]: kernel, bpffs, programs;
//! - [`files`]: atomic writes.

pub mod checks;
pub mod files;
pub mod template;
pub mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use margay_conf::margay::{Dataplane, PluginConf};
use margay_conf::signals::TermSignals;
use margay_ebpf::node::Settings;

use crate::files::Outcome;
use crate::template::{DEFAULT_TEMPLATE, Values, render};

/// The binaries installed into the CNI bin dir.
pub const BINARIES: [&str; 3] = ["margay", "margay-ipam", "margayctl"];

/// Where the template comes from.
#[derive(Debug, Clone)]
pub enum Template {
    Builtin,
    /// `CNI_NETWORK_CONFIG`: the text itself.
    Text(String),
    /// `--template`: a file (a ConfigMap key mounted as a file).
    File(PathBuf),
}

impl Template {
    fn read(&self) -> Result<String> {
        match self {
            Template::Builtin => Ok(DEFAULT_TEMPLATE.to_string()),
            Template::Text(t) => Ok(t.clone()),
            Template::File(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading the template {}", p.display())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub conf_name: String,
    pub template: Template,
    /// Where the binaries to install are.
    pub source_dir: PathBuf,
    pub skip_binaries: Vec<String>,
    /// Older conf files (names in the conf dir) to remove.
    pub remove_confs: Vec<String>,
    pub values: Values,
    pub dry_run: bool,
}

impl Options {
    fn conf_path(&self) -> PathBuf {
        self.cni_conf_dir.join(&self.conf_name)
    }

    fn binaries(&self) -> impl Iterator<Item = &'static str> + '_ {
        BINARIES
            .into_iter()
            .filter(|b| !self.skip_binaries.iter().any(|s| s == b))
    }
}

pub(crate) fn verb(dry_run: bool, done: &str, would: &str) -> String {
    if dry_run {
        would.to_string()
    } else {
        done.to_string()
    }
}

/// Installs. On any error before the final writes, nothing is written: a
/// node keeps the good conflist it had.
pub fn install(opts: &Options) -> Result<Vec<String>> {
    let mut log = Vec::new();
    let rendered = render(&opts.template.read()?, &opts.values);
    let plugin = validate::validate(&rendered)?;
    log.push(format!(
        "conflist {}: valid, dataplane {:?}",
        opts.conf_name, plugin.dataplane
    ));
    let sources: Vec<(&str, Vec<u8>)> = opts
        .binaries()
        .map(|name| {
            let path = opts.source_dir.join(name);
            std::fs::read(&path)
                .map(|bytes| (name, bytes))
                .with_context(|| {
                    format!(
                        "binary {} is missing (--source-dir / MARGAY_SOURCE_DIR)",
                        path.display()
                    )
                })
        })
        .collect::<Result<_>>()?;
    if plugin.dataplane == Dataplane::Bpf {
        log.push(checks::kernel()?);
        if opts.dry_run {
            log.push(format!(
                "would load and pin the eBPF programs under {}",
                plugin.bpf_root.display()
            ));
        } else {
            log.push(checks::dataplane(
                &plugin.bpf_root,
                &Settings::from_conf(&plugin),
            )?);
        }
        log.extend(checks::data_ifaces(
            &plugin.bpf_root,
            &Settings::from_conf(&plugin),
            plugin.data_iface_pattern().as_ref(),
            plugin.bpf_external_service_mode,
            opts.dry_run,
        )?);
    } else if plugin.bpf_root.exists() {
        // Switched from bpf to linux.
        log.extend(checks::node_programs_off(&plugin.bpf_root, opts.dry_run)?);
    }
    for (name, bytes) in &sources {
        let target = opts.cni_bin_dir.join(name);
        let unchanged = std::fs::read(&target).is_ok_and(|b| &b == bytes);
        let outcome = if opts.dry_run || unchanged {
            if unchanged {
                Outcome::Unchanged
            } else {
                Outcome::Written
            }
        } else {
            files::put(&target, bytes, 0o755)?
        };
        log.push(match outcome {
            Outcome::Written => format!(
                "{} {}",
                verb(opts.dry_run, "installed", "would install"),
                target.display()
            ),
            Outcome::Unchanged => format!("{} is up to date", target.display()),
        });
    }
    for old in &opts.remove_confs {
        let path = opts.cni_conf_dir.join(old);
        if old != &opts.conf_name && path.exists() {
            if !opts.dry_run {
                files::remove(&path)?;
            }
            log.push(format!(
                "{} {}",
                verb(opts.dry_run, "removed", "would remove"),
                path.display()
            ));
        }
    }
    // Last: the conflist is what makes kubelet use the network.
    let conf = opts.conf_path();
    let outcome = if opts.dry_run {
        Outcome::Written
    } else {
        files::put(&conf, rendered.as_bytes(), 0o600)?
    };
    log.push(match outcome {
        Outcome::Written => format!(
            "{} {} (mode 0600)",
            verb(opts.dry_run, "wrote", "would write"),
            conf.display()
        ),
        Outcome::Unchanged => format!("{} is up to date", conf.display()),
    });
    Ok(log)
}

/// Removes the conflist, the binaries and the node's eBPF state (every
/// endpoint detached, every pin removed): the node is back to no Margay.
pub fn uninstall(opts: &Options) -> Result<Vec<String>> {
    let mut log = Vec::new();
    let installed = std::fs::read_to_string(opts.conf_path())
        .ok()
        .and_then(|text| validate::validate(&text).ok());
    let bpf_root = installed
        .as_ref()
        .map(|p: &PluginConf| p.bpf_root.clone())
        .unwrap_or_else(|| PathBuf::from(&opts.values.bpf_root));
    let conf = opts.conf_path();
    if opts.dry_run || files::remove(&conf)? {
        log.push(format!(
            "{} {}",
            verb(opts.dry_run, "removed", "would remove"),
            conf.display()
        ));
    }
    for name in opts.binaries() {
        let path = opts.cni_bin_dir.join(name);
        if path.exists() && (opts.dry_run || files::remove(&path)?) {
            log.push(format!(
                "{} {}",
                verb(opts.dry_run, "removed", "would remove"),
                path.display()
            ));
        }
    }
    if bpf_root.exists() {
        if !opts.dry_run {
            remove_dataplane(&bpf_root)?;
        }
        log.push(format!(
            "{} every endpoint and removed the pins under {}",
            verb(opts.dry_run, "detached", "would detach"),
            bpf_root.display()
        ));
    }
    Ok(log)
}

fn remove_dataplane(root: &Path) -> Result<()> {
    use margay_ebpf::node::Node;
    use margay_ebpf::registry;
    for ep in registry::list(root).unwrap_or_default() {
        Node::detach(&ep.ifname())?;
    }
    checks::node_programs_off(root, false)?;
    margay_ebpf::cluster::forget_all(root)?;
    std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    margay_ebpf::paths::remove_run_files(root)
        .with_context(|| format!("removing the lock files of {}", root.display()))
}

/// What `--watch` compares between rounds: the template, the installed
/// conflist's text, and each installed binary's size and modification
/// time (reading the binaries whole every interval would cost too much;
/// one replaced or removed by hand changes these).
type Fingerprint = (
    Option<String>,
    Option<String>,
    Vec<Option<(u64, std::time::SystemTime)>>,
);

fn fingerprint(opts: &Options) -> Fingerprint {
    (
        opts.template.read().ok(),
        std::fs::read_to_string(opts.conf_path()).ok(),
        opts.binaries()
            .map(|b| {
                let m = std::fs::metadata(opts.cni_bin_dir.join(b)).ok()?;
                Some((m.len(), m.modified().ok()?))
            })
            .collect(),
    )
}

/// Installs, then stays: re-installs whenever the template changes or an
/// installed file is edited, replaced or removed, until SIGTERM or SIGINT.
/// `report` gets each round's lines, and each error once (a failed round is
/// retried every interval, as the failure may be passing, but not reported
/// again until it changes).
pub fn watch(
    opts: &Options,
    interval: Duration,
    mut report: impl FnMut(Result<Vec<String>>),
) -> Result<()> {
    let stop = TermSignals::block().context("blocking SIGTERM")?;
    let mut seen = None;
    let mut last_error = None;
    loop {
        // Taken before the round, not after: a change made while the round
        // runs (the template edited, the conflist removed) must be seen
        // as a change by the next one. The cost is one extra round after
        // the first install, which finds every file up to date.
        let now = fingerprint(opts);
        if seen.as_ref() != Some(&now) {
            match install(opts) {
                Ok(lines) => {
                    report(Ok(lines));
                    seen = Some(now);
                    last_error = None;
                }
                Err(e) => {
                    let text = margay_ebpf::error::report(e.as_ref());
                    if last_error.as_ref() != Some(&text) {
                        report(Err(e));
                        last_error = Some(text);
                    }
                }
            }
        }
        if stop
            .wait(interval)
            .context("waiting for signals")?
            .is_some()
        {
            return Ok(());
        }
    }
}
