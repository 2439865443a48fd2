//! What a rendered conflist must be before it is written: a conflist
//! Margay's own parser accepts, each Margay plugin's configuration valid,
//! and no hostPort mapping in BPF mode.

use anyhow::{Result, anyhow, bail};
use margay_conf::margay::{Dataplane, IpamConf, PluginConf};
use margay_conf::netconf::NetConfList;
use serde_json::Value;

use crate::template::leftovers;

/// The margay plugin's configuration, as the plugin will read it.
pub fn validate(rendered: &str) -> Result<PluginConf> {
    let left = leftovers(rendered);
    if !left.is_empty() {
        bail!("the template has unknown placeholders: {}", left.join(", "));
    }
    let list = NetConfList::parse(rendered.as_bytes())
        .map_err(|e| anyhow!("the rendered conflist is invalid: {e}"))?;
    let mut margay = None;
    for (i, plugin) in list.plugins.iter().enumerate() {
        let conf = list
            .plugin_config(i, &Default::default(), None)
            .map_err(|e| anyhow!("plugins[{i}]: {e}"))?;
        if plugin.get("type").and_then(Value::as_str) == Some("margay") {
            let parsed =
                PluginConf::from_conf(&conf).map_err(|e| anyhow!("plugins[{i}] (margay): {e}"))?;
            if parsed.ipam.plugin_type == "margay-ipam" {
                IpamConf::from_conf(&conf)
                    .map_err(|e| anyhow!("plugins[{i}] (margay-ipam): {e}"))?;
            }
            margay = Some(parsed);
        }
    }
    let margay = margay.ok_or_else(|| anyhow!("the conflist has no plugin of type margay"))?;
    if margay.dataplane == Dataplane::Bpf {
        reject_host_ports(&list)?;
    }
    Ok(margay)
}

/// hostPorts work through `portmap`'s iptables DNAT, which the eBPF
/// dataplane's programs would bypass for local pods: a node that promised
/// them would silently break them, so it is refused.
fn reject_host_ports(list: &NetConfList) -> Result<()> {
    for (i, plugin) in list.plugins.iter().enumerate() {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let maps_ports = plugin
            .pointer("/capabilities/portMappings")
            .and_then(Value::as_bool)
            == Some(true);
        if kind == "portmap" || maps_ports {
            bail!(
                "hostPorts are not supported with the eBPF dataplane: plugins[{i}] ({kind}) provides \
                 portMappings. Remove it from the template (and hostPort from pod specs; use a \
                 NodePort Service instead), or set the dataplane to \"linux\" (MARGAY_DATAPLANE=linux). \
                 Nothing was written."
            );
        }
    }
    Ok(())
}
