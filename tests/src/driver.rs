//! A CNI runtime for tests, as libcni behaves: runs a conflist's plugins in
//! order on ADD (each given the previous one's result as `prevResult`),
//! caches the final result, and replays it on CHECK and DEL (plugins in
//! reverse order for DEL).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use margay_conf::CniError;
use margay_conf::env::{Attachment, CniArgs, Command};
use margay_conf::exec::PluginCall;
use margay_conf::netconf::{AttachmentId, NetConfList};
use serde_json::Value;

/// A loaded conflist plus where plugins live and where results are cached.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub list: NetConfList,
    pub cni_path: Vec<PathBuf>,
    cache_dir: PathBuf,
    /// Capability arguments (`runtimeConfig`) passed to plugins that declare them.
    pub runtime_config: BTreeMap<String, Value>,
}

impl Runtime {
    /// A runtime for `conflist` (JSON). Results are cached under `cache_dir`.
    pub fn new(conflist: &Value, cni_path: Vec<PathBuf>, cache_dir: &Path) -> Runtime {
        let bytes = serde_json::to_vec(conflist).expect("JSON serializes");
        let list = NetConfList::parse(&bytes).unwrap_or_else(|e| panic!("invalid conflist: {e}"));
        std::fs::create_dir_all(cache_dir).expect("cache dir");
        Runtime {
            list,
            cni_path,
            cache_dir: cache_dir.to_path_buf(),
            runtime_config: BTreeMap::new(),
        }
    }

    fn cache_file(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.cache_dir
            .join(format!("{}-{container_id}-{ifname}.json", self.list.name))
    }

    /// Container IDs with a cached result for `ifname` (ADDed, not DELeted).
    pub fn cached_container_ids(&self, ifname: &str) -> Vec<String> {
        let prefix = format!("{}-", self.list.name);
        let suffix = format!("-{ifname}.json");
        std::fs::read_dir(&self.cache_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let cid = name.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
                Some(cid.to_string())
            })
            .collect()
    }

    /// The cached result of the last successful ADD of this attachment.
    pub fn cached_result(&self, container_id: &str, ifname: &str) -> Option<Value> {
        let text = std::fs::read(self.cache_file(container_id, ifname)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn attachment(
        container_id: &str,
        netns: Option<&Path>,
        ifname: &str,
        args: &str,
    ) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            ifname: ifname.into(),
            netns: netns.map(Path::to_path_buf),
            args: CniArgs::parse(args).expect("test CNI_ARGS are well formed"),
        }
    }

    fn plugin_type(&self, index: usize) -> String {
        self.list.plugins[index]["type"]
            .as_str()
            .expect("NetConfList::parse checked the type")
            .to_string()
    }

    /// ADD through the whole chain; on success the result is cached.
    pub fn add(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        args: &str,
    ) -> Result<Value, CniError> {
        let att = Self::attachment(container_id, Some(netns), ifname, args);
        let call = PluginCall::attachment(Command::Add, &att, &self.cni_path);
        let mut prev: Option<Value> = None;
        for i in 0..self.list.plugins.len() {
            let conf = self
                .list
                .plugin_config(i, &self.runtime_config, prev.as_ref())?;
            prev = call.run(&self.plugin_type(i), &conf)?;
        }
        let result = prev.unwrap_or(Value::Null);
        std::fs::write(
            self.cache_file(container_id, ifname),
            serde_json::to_vec(&result).expect("JSON serializes"),
        )
        .expect("cache write");
        Ok(result)
    }

    /// CHECK through the chain with the cached result as `prevResult`.
    pub fn check(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        args: &str,
    ) -> Result<(), CniError> {
        let prev = self.cached_result(container_id, ifname);
        let att = Self::attachment(container_id, Some(netns), ifname, args);
        let call = PluginCall::attachment(Command::Check, &att, &self.cni_path);
        for i in 0..self.list.plugins.len() {
            let conf = self
                .list
                .plugin_config(i, &self.runtime_config, prev.as_ref())?;
            call.run(&self.plugin_type(i), &conf)?;
        }
        Ok(())
    }

    /// DEL through the chain in reverse, with the cached result when there
    /// is one; `netns` may be `None` (containerd sends an empty CNI_NETNS
    /// once the sandbox is gone). The cache entry goes on success.
    pub fn del(
        &self,
        container_id: &str,
        netns: Option<&Path>,
        ifname: &str,
        args: &str,
    ) -> Result<(), CniError> {
        let prev = self.cached_result(container_id, ifname);
        let att = Self::attachment(container_id, netns, ifname, args);
        let call = PluginCall::attachment(Command::Del, &att, &self.cni_path);
        for i in (0..self.list.plugins.len()).rev() {
            let conf = self
                .list
                .plugin_config(i, &self.runtime_config, prev.as_ref())?;
            call.run(&self.plugin_type(i), &conf)?;
        }
        let _ = std::fs::remove_file(self.cache_file(container_id, ifname));
        Ok(())
    }

    /// GC: every plugin is told which attachments are still valid.
    pub fn gc(&self, valid: &[AttachmentId]) -> Result<(), CniError> {
        let call = PluginCall::network(Command::Gc, &self.cni_path);
        let list = serde_json::to_value(valid).expect("JSON serializes");
        for i in 0..self.list.plugins.len() {
            let mut conf = self.list.plugin_config(i, &self.runtime_config, None)?;
            conf["cni.dev/valid-attachments"] = list.clone();
            conf["cni.dev/attachments"] = list.clone();
            call.run(&self.plugin_type(i), &conf)?;
        }
        Ok(())
    }

    /// STATUS of every plugin; the first error is returned.
    pub fn status(&self) -> Result<(), CniError> {
        let call = PluginCall::network(Command::Status, &self.cni_path);
        for i in 0..self.list.plugins.len() {
            let conf = self.list.plugin_config(i, &self.runtime_config, None)?;
            call.run(&self.plugin_type(i), &conf)?;
        }
        Ok(())
    }
}

/// The first address of an ADD result, without its prefix length, when it
/// is IPv4 (Margay and host-local list IPv4 first).
pub fn first_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"][0]["address"]
        .as_str()?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// The first IPv6 address of an ADD result.
pub fn first_ipv6(result: &Value) -> Option<std::net::Ipv6Addr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .next()
}
