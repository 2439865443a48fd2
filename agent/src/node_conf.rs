//! The node's Margay configuration as the installer wrote it: the conflist
//! is the one place pools, block sizes, the IPAM store and the BPF root are
//! set, so the agent reads them there rather than being told twice.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use margay_conf::margay::{Dataplane, IpamConf, LogLevel, PluginConf};
use margay_conf::netconf::NetConfList;
use serde_json::Value;

/// What the agent takes from the conflist.
#[derive(Debug, Clone)]
pub struct NodeConf {
    pub ipam: IpamConf,
    pub dataplane: Dataplane,
    pub bpf_root: PathBuf,
    pub log_level: LogLevel,
}

impl NodeConf {
    /// Reads `path`, naming `node` as the node (the conflist's `nodename`
    /// is the same, substituted by the installer).
    ///
    /// # Errors
    /// The file cannot be read, is no conflist, or has no `margay` plugin
    /// with a `margay-ipam` IPAM section.
    pub fn read(path: &Path, node: &str) -> anyhow::Result<NodeConf> {
        let text = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        let list = NetConfList::parse(&text).with_context(|| format!("{}", path.display()))?;
        let Some(plugin) = list
            .plugins
            .iter()
            .find(|p| p.get("type").and_then(Value::as_str) == Some("margay"))
        else {
            bail!("{}: no plugin of type margay", path.display());
        };
        let mut raw = plugin.clone();
        raw["nodename"] = node.into();
        let conf = PluginConf::from_conf(&raw).with_context(|| format!("{}", path.display()))?;
        if conf.ipam.plugin_type != "margay-ipam" {
            bail!(
                "{}: ipam.type is {:?}; the agent manages margay-ipam's blocks",
                path.display(),
                conf.ipam.plugin_type
            );
        }
        let ipam = IpamConf::from_conf(&raw).with_context(|| format!("{}", path.display()))?;
        let log_level = margay_conf::margay::LogConfig::from_conf(&raw)
            .map(|l| l.log_level)
            .unwrap_or_default();
        Ok(NodeConf {
            ipam,
            dataplane: conf.dataplane,
            bpf_root: conf.bpf_root,
            log_level,
        })
    }
}
