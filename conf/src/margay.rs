//! Margay's own configuration keys, beside the standard CNI ones, and their
//! validation. Every error names the key at fault.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{CniError, Code};

/// Keys the CNI spec or libcni put in any plugin's configuration.
/// The prefix lengths an IPv4 block may have (`ipam.block_size`): at most
/// 4096 addresses, so a block's bitmap and counts stay small.
pub const BLOCK_PREFIXES_V4: std::ops::RangeInclusive<u8> = 20..=32;
/// The prefix lengths an IPv6 block may have (`ipam.block_size_v6`).
pub const BLOCK_PREFIXES_V6: std::ops::RangeInclusive<u8> = 116..=128;

const STANDARD_KEYS: [&str; 10] = [
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "capabilities",
    "runtimeConfig",
    "args",
    "prevResult",
    "dns",
    "ipam",
];

/// Deserializes `value` into `T`, naming the path of a bad field
/// (`ipam.pools[1]`) in the CNI error.
pub fn parse_section<T: DeserializeOwned>(value: &Value, section: &str) -> Result<T, CniError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = match (section, path.as_str()) {
            ("", p) => p.to_string(),
            (s, ".") => s.to_string(),
            (s, p) => format!("{s}.{p}"),
        };
        CniError::invalid_config(format!("{at}: {}", e.into_inner()))
    })
}

/// Rejects keys of `object` that are neither standard nor in `known`, so a
/// typo (`"dataplan": "linux"`) is an error rather than a silent default.
/// Namespaced keys (`cni.dev/...`, `example.com/...`) are left to whoever
/// owns them.
fn reject_unknown_keys(object: &Value, known: &[&str], section: &str) -> Result<(), CniError> {
    let known: BTreeSet<&str> = known.iter().chain(STANDARD_KEYS.iter()).copied().collect();
    let unknown: Vec<&str> = object
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .map(String::as_str)
        .filter(|k| !k.contains('/') && !known.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let prefix = if section.is_empty() {
        String::new()
    } else {
        format!("{section}.")
    };
    Err(CniError::new(
        Code::UnsupportedField,
        format!(
            "unsupported configuration key {}",
            unknown
                .iter()
                .map(|k| format!("{prefix}{k}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .with_details(format!(
        "known keys: {}",
        known.iter().copied().collect::<Vec<_>>().join(", ")
    )))
}

/// `log_level`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    #[default]
    Warn,
    Info,
    Debug,
    Trace,
}

/// `log_file` and `log_level`, read by every binary before anything else so
/// that later failures are logged.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogConfig {
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub log_level: LogLevel,
}

impl LogConfig {
    pub fn from_conf(raw: &Value) -> Result<LogConfig, CniError> {
        let picked = serde_json::json!({
            "log_file": raw.get("log_file").cloned().unwrap_or(Value::Null),
            "log_level": raw.get("log_level").cloned().unwrap_or(Value::Null),
        });
        let mut conf: LogConfig = parse_section(&strip_nulls(picked), "")?;
        if conf
            .log_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            conf.log_file = None;
        }
        Ok(conf)
    }
}

fn strip_nulls(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    v
}

/// `dataplane`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// eBPF programs on every pod's host veth.
    #[default]
    Bpf,
    /// Routes and sysctls only.
    Linux,
}

/// The `ipam` section as the main plugin sees it: only the type matters to
/// it, the rest belongs to the IPAM plugin.
#[derive(Debug, Clone, Deserialize)]
pub struct IpamRef {
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// margay-ipam's `datastore`: with `kubernetes` the node runs
    /// margay-agent, which the plugin asks to put a new pod's
    /// NetworkPolicy in force.
    #[serde(default)]
    pub datastore: Datastore,
    #[serde(default = "default_agent_socket")]
    pub agent_socket: PathBuf,
}

impl IpamRef {
    /// The socket of the node's margay-agent, when the node runs one.
    pub fn agent(&self) -> Option<&Path> {
        (self.plugin_type == "margay-ipam" && self.datastore == Datastore::Kubernetes)
            .then_some(self.agent_socket.as_path())
    }
}

/// Configuration of the `margay` plugin.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginConf {
    pub ipam: IpamRef,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default)]
    pub dataplane: Dataplane,
    #[serde(default = "default_bpf_root")]
    pub bpf_root: PathBuf,
    #[serde(default)]
    pub nodename: Option<String>,
    /// What the eBPF programs report: `off`, `info` (drops) or `debug`
    /// (drops and every new flow's verdict).
    #[serde(default)]
    pub bpf_log_level: BpfLogLevel,
    /// Entries in the conntrack table (LRU: the least recently used flow
    /// is forgotten when it is full).
    #[serde(default = "default_conntrack_size")]
    pub bpf_conntrack_size: u32,
    /// Service frontends (ClusterIP:port) the node can hold.
    #[serde(default = "default_service_frontends")]
    pub bpf_service_frontends: u32,
    /// Service backends the node can hold, over all services.
    #[serde(default = "default_service_backends")]
    pub bpf_service_backends: u32,
    /// Entries of the NetworkPolicy peer sets, per family: one per member
    /// address (or block, or address and named port) of each set.
    #[serde(default = "default_ip_set_entries")]
    pub bpf_ip_set_entries: u32,
    /// The node's data interfaces, where NodePorts answer: a regular
    /// expression matching whole interface names (`eth0|ens.*`).
    /// `margay-install` attaches `from_net` to every match.
    #[serde(default)]
    pub bpf_data_ifaces: Option<String>,
    /// How NodePort traffic reaches a backend on another node: `tunnel`
    /// (there and back through the node that took it in) or `dsr` (the
    /// backend's node answers the client directly).
    #[serde(default)]
    pub bpf_external_service_mode: ExternalServiceMode,
}

/// `bpf_external_service_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExternalServiceMode {
    /// Through the tunnel, the reply back through it and out of the node
    /// that took the connection in.
    #[default]
    Tunnel,
    /// Through the tunnel; the backend's node answers the client itself,
    /// as the NodePort.
    Dsr,
}

impl std::str::FromStr for ExternalServiceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tunnel" => Ok(ExternalServiceMode::Tunnel),
            "dsr" => Ok(ExternalServiceMode::Dsr),
            other => Err(format!("{other:?} is not tunnel or dsr")),
        }
    }
}

impl PluginConf {
    /// `bpf_data_ifaces` as a whole-name matcher (validated at parse).
    pub fn data_iface_pattern(&self) -> Option<regex::Regex> {
        let pattern = self.bpf_data_ifaces.as_deref().filter(|p| !p.is_empty())?;
        regex::Regex::new(&format!("^(?:{pattern})$")).ok()
    }
}

/// `bpf_log_level`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BpfLogLevel {
    Off,
    #[default]
    Info,
    Debug,
}

fn default_conntrack_size() -> u32 {
    65_536
}

fn default_service_frontends() -> u32 {
    65_536
}

fn default_service_backends() -> u32 {
    262_144
}

fn default_ip_set_entries() -> u32 {
    1 << 20
}

fn default_mtu() -> u32 {
    1500
}

fn default_bpf_root() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/margay")
}

impl PluginConf {
    const KEYS: [&'static str; 14] = [
        "mtu",
        "dataplane",
        "bpf_root",
        "bpf_log_level",
        "bpf_conntrack_size",
        "bpf_service_frontends",
        "bpf_service_backends",
        "bpf_ip_set_entries",
        "bpf_data_ifaces",
        "bpf_external_service_mode",
        "nodename",
        "log_file",
        "log_level",
        "ipam",
    ];

    pub fn from_conf(raw: &Value) -> Result<PluginConf, CniError> {
        reject_unknown_keys(raw, &Self::KEYS, "")?;
        if raw.get("ipam").is_none() {
            return Err(CniError::invalid_config(
                "ipam: missing; the margay plugin delegates addressing to an IPAM plugin",
            ));
        }
        let conf: PluginConf = parse_section(raw, "")?;
        if conf.ipam.plugin_type.is_empty() || conf.ipam.plugin_type.contains('/') {
            return Err(CniError::invalid_config(
                "ipam.type: must name an IPAM plugin executable found on CNI_PATH",
            ));
        }
        if !(68..=65535).contains(&conf.mtu) {
            return Err(CniError::invalid_config(format!(
                "mtu: {} is outside 68..=65535",
                conf.mtu
            )));
        }
        if !(1024..=16 << 20).contains(&conf.bpf_conntrack_size) {
            return Err(CniError::invalid_config(format!(
                "bpf_conntrack_size: {} is outside 1024..=16777216",
                conf.bpf_conntrack_size
            )));
        }
        for (key, value, max) in [
            ("bpf_service_frontends", conf.bpf_service_frontends, 1 << 20),
            ("bpf_service_backends", conf.bpf_service_backends, 4 << 20),
            ("bpf_ip_set_entries", conf.bpf_ip_set_entries, 16 << 20),
        ] {
            if !(16..=max).contains(&value) {
                return Err(CniError::invalid_config(format!(
                    "{key}: {value} is outside 16..={max}"
                )));
            }
        }
        if let Some(pattern) = &conf.bpf_data_ifaces
            && let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$"))
        {
            return Err(CniError::invalid_config(format!(
                "bpf_data_ifaces: {pattern:?} is not a regular expression: {e}"
            )));
        }
        if !conf.bpf_root.is_absolute() {
            return Err(CniError::invalid_config(format!(
                "bpf_root: {:?} is not an absolute path",
                conf.bpf_root
            )));
        }
        Ok(conf)
    }
}

/// Configuration of `margay-ipam`: the `ipam` section plus top-level `nodename`.
#[derive(Debug, Clone, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub plugin_type: String,
    pub pools: Vec<IpNetwork>,
    /// Prefix length of the blocks IPv4 pools are cut into.
    #[serde(default = "default_block_size")]
    pub block_size: u8,
    /// Prefix length of the blocks IPv6 pools are cut into.
    #[serde(default = "default_block_size_v6")]
    pub block_size_v6: u8,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How long to wait for another IPAM process before answering code 11.
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// Who decides which node owns which block.
    #[serde(default)]
    pub datastore: Datastore,
    /// margay-agent's socket, asked for a block when the node's are full
    /// (`datastore: kubernetes`).
    #[serde(default = "default_agent_socket")]
    pub agent_socket: PathBuf,
    /// Filled from the top-level `nodename`, else the hostname.
    #[serde(skip)]
    pub nodename: String,
}

fn default_block_size() -> u8 {
    26
}
fn default_block_size_v6() -> u8 {
    122
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/cni/margay")
}
fn default_lock_timeout_ms() -> u64 {
    10_000
}
fn default_agent_socket() -> PathBuf {
    PathBuf::from("/run/margay/agent.sock")
}

/// `ipam.datastore`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datastore {
    /// Blocks are claimed in the node's own store: right for one node, or
    /// nodes given pools of their own.
    #[default]
    Local,
    /// Blocks are claimed in the Kubernetes API (IPAMBlock objects) by
    /// margay-agent; the store allocates only inside blocks the API says
    /// the node holds.
    Kubernetes,
}

impl IpamConf {
    const KEYS: [&'static str; 8] = [
        "pools",
        "block_size",
        "block_size_v6",
        "data_dir",
        "lock_timeout_ms",
        "datastore",
        "agent_socket",
        "type",
    ];

    pub fn from_conf(raw: &Value) -> Result<IpamConf, CniError> {
        let section = raw
            .get("ipam")
            .ok_or_else(|| CniError::invalid_config("ipam: missing"))?;
        reject_unknown_keys(section, &Self::KEYS, "ipam")?;
        let mut conf: IpamConf = parse_section(section, "ipam")?;
        conf.nodename = match raw.get("nodename") {
            None | Some(Value::Null) => hostname()?,
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "nodename: {other} is not a non-empty string"
                )));
            }
        };
        conf.validate()?;
        Ok(conf)
    }

    /// A configuration that names only the store, for operations that need
    /// no pools (releasing a handle from the command line).
    pub fn store_only(data_dir: PathBuf) -> IpamConf {
        IpamConf {
            plugin_type: "margay-ipam".into(),
            pools: Vec::new(),
            block_size: default_block_size(),
            block_size_v6: default_block_size_v6(),
            data_dir,
            lock_timeout_ms: default_lock_timeout_ms(),
            datastore: Datastore::default(),
            agent_socket: default_agent_socket(),
            nodename: String::new(),
        }
    }

    fn validate(&self) -> Result<(), CniError> {
        if self.pools.is_empty() {
            return Err(CniError::invalid_config(
                "ipam.pools: at least one pool is required",
            ));
        }
        if !self.pools.iter().any(IpNetwork::is_ipv4) {
            return Err(CniError::invalid_config(
                "ipam.pools: at least one IPv4 pool is required",
            ));
        }
        for (i, pool) in self.pools.iter().enumerate() {
            if pool.network() != pool.ip() {
                return Err(CniError::invalid_config(format!(
                    "ipam.pools[{i}]: {pool} has host bits set; did you mean {}/{}?",
                    pool.network(),
                    pool.prefix()
                )));
            }
            if let Some((j, other)) = self.pools[..i]
                .iter()
                .enumerate()
                .find(|(_, o)| o.contains(pool.ip()) || pool.contains(o.ip()))
            {
                return Err(CniError::invalid_config(format!(
                    "ipam.pools[{i}]: {pool} overlaps ipam.pools[{j}] {other}"
                )));
            }
        }
        if !BLOCK_PREFIXES_V4.contains(&self.block_size) {
            return Err(CniError::invalid_config(format!(
                "ipam.block_size: /{} is outside /20../32",
                self.block_size
            )));
        }
        if !BLOCK_PREFIXES_V6.contains(&self.block_size_v6) {
            return Err(CniError::invalid_config(format!(
                "ipam.block_size_v6: /{} is outside /116../128",
                self.block_size_v6
            )));
        }
        for (key, path) in [
            ("ipam.data_dir", &self.data_dir),
            ("ipam.agent_socket", &self.agent_socket),
        ] {
            if !path.is_absolute() {
                return Err(CniError::invalid_config(format!(
                    "{key}: {path:?} is not an absolute path"
                )));
            }
        }
        Ok(())
    }

    /// The prefix length of blocks cut from `pool`: the configured block
    /// size for its family, or the pool itself when it is smaller than a block.
    pub fn block_prefix(&self, pool: &IpNetwork) -> u8 {
        let configured = match pool.ip() {
            IpAddr::V4(_) => self.block_size,
            IpAddr::V6(_) => self.block_size_v6,
        };
        configured.max(pool.prefix())
    }
}

fn hostname() -> Result<String, CniError> {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .map_err(|e| {
            CniError::io(
                "nodename is not configured and the hostname cannot be read",
                e,
            )
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plugin(extra: Value) -> Result<PluginConf, CniError> {
        let mut raw = json!({"cniVersion": "1.1.0", "name": "n", "type": "margay",
            "ipam": {"type": "margay-ipam", "pools": ["10.0.0.0/16"]}});
        raw.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        PluginConf::from_conf(&raw)
    }

    #[test]
    fn plugin_defaults_and_errors_name_the_key() {
        let c = plugin(json!({})).unwrap();
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.dataplane, Dataplane::Bpf);
        assert_eq!(c.bpf_root, PathBuf::from("/sys/fs/bpf/margay"));
        assert_eq!(
            plugin(json!({"dataplane": "linux"})).unwrap().dataplane,
            Dataplane::Linux
        );

        let cases = [
            (
                json!({"dataplane": "xdp"}),
                "dataplane",
                Code::InvalidNetworkConfig,
            ),
            (json!({"mtu": 20}), "mtu", Code::InvalidNetworkConfig),
            (json!({"mtu": "big"}), "mtu", Code::InvalidNetworkConfig),
            (
                json!({"bpf_root": "rel"}),
                "bpf_root",
                Code::InvalidNetworkConfig,
            ),
            (
                json!({"dataplan": "linux"}),
                "dataplan",
                Code::UnsupportedField,
            ),
            (json!({"ipam": {}}), "ipam", Code::InvalidNetworkConfig),
            (
                json!({"log_level": "loud"}),
                "log_level",
                Code::InvalidNetworkConfig,
            ),
        ];
        for (extra, key, code) in cases {
            let e = if key == "log_level" {
                let mut raw = json!({});
                raw.as_object_mut()
                    .unwrap()
                    .extend(extra.as_object().unwrap().clone());
                LogConfig::from_conf(&raw).unwrap_err()
            } else {
                plugin(extra.clone()).unwrap_err()
            };
            assert_eq!(e.code, code, "{extra}: {e}");
            assert!(e.msg.contains(key), "{extra}: {}", e.msg);
        }
        assert!(
            plugin(json!({"example.com/x": 1})).is_ok(),
            "namespaced keys pass"
        );
    }

    fn ipam(section: Value) -> Result<IpamConf, CniError> {
        IpamConf::from_conf(&json!({"name": "n", "nodename": "node-a", "ipam": section}))
    }

    #[test]
    fn ipam_pools_are_validated() {
        let ok =
            ipam(json!({"type": "margay-ipam", "pools": ["10.0.0.0/30", "fd00::/64"]})).unwrap();
        assert_eq!(ok.nodename, "node-a");
        assert_eq!(
            ok.block_prefix(&ok.pools[0]),
            30,
            "a pool smaller than a block is one block"
        );
        assert_eq!(ok.block_prefix(&ok.pools[1]), 122);

        let cases = [
            (json!({"type": "margay-ipam", "pools": []}), "ipam.pools"),
            (
                json!({"type": "margay-ipam", "pools": ["fd00::/64"]}),
                "IPv4",
            ),
            (
                json!({"type": "margay-ipam", "pools": ["10.0.0.0/33"]}),
                "ipam.pools[0]",
            ),
            (
                json!({"type": "margay-ipam", "pools": ["10.0.1.0/16"]}),
                "did you mean 10.0.0.0/16",
            ),
            (
                json!({"type": "margay-ipam", "pools": ["10.0.0.0/16", "10.0.4.0/24"]}),
                "overlaps",
            ),
            (
                json!({"type": "margay-ipam", "pools": ["10.0.0.0/16"], "block_size": 8}),
                "ipam.block_size",
            ),
            (
                json!({"type": "margay-ipam", "pools": ["10.0.0.0/16"], "data_dir": "x"}),
                "ipam.data_dir",
            ),
            (
                json!({"type": "margay-ipam", "pools": ["10.0.0.0/16"], "datastore": "etcd"}),
                "ipam.datastore",
            ),
            (
                json!({"type": "margay-ipam", "pools": ["10.0.0.0/16"], "agent_socket": "a.sock"}),
                "ipam.agent_socket",
            ),
        ];
        for (section, needle) in cases {
            let e = ipam(section.clone()).unwrap_err();
            assert_eq!(e.code, Code::InvalidNetworkConfig, "{section}");
            assert!(e.msg.contains(needle), "{section}: {}", e.msg);
        }
        let typo = ipam(json!({"type": "margay-ipam", "pools": ["10.0.0.0/16"], "pool": 1}));
        let e = typo.unwrap_err();
        assert_eq!(e.code, Code::UnsupportedField);
        assert!(e.msg.contains("ipam.pool"), "{}", e.msg);
    }
}
