//! Handles: the key an allocation is recorded under, one per attachment.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use margay_conf::env::Attachment;
use serde::{Deserialize, Serialize};

/// `<network>.<containerID>.<ifname>`: the spec's primary key for plugin
/// state. Network names and container IDs may contain dots, so two
/// attachments can share a key (network `a.b`, container `c` and network
/// `a`, container `b.c`): the parts are also kept separately in the record,
/// and a record found under a key is only used after
/// [`HandleRecord::same_attachment`] says it is the one asked for.
pub fn handle_id(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network}.{container_id}.{ifname}")
}

/// What is held under a handle, with enough context for an operator to
/// tell which pod it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleRecord {
    /// The key the record is stored under, from [`handle_id`].
    pub handle: String,
    /// The network's name (`name` in its configuration).
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface inside the container.
    pub ifname: String,
    /// The pod's namespace, when `CNI_ARGS` carried `K8S_POD_NAMESPACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// The pod's name, when `CNI_ARGS` carried `K8S_POD_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The node that made the allocation.
    pub node: String,
    /// When the allocation was made, in seconds since the Unix epoch (0 if
    /// the clock reads earlier than that).
    pub created: u64,
    /// The addresses held: one per configured family, or exactly those
    /// asked for by name. Empty until
    /// [`Allocator::assign`](crate::allocator::Allocator::assign) fills it.
    pub addresses: Vec<IpAddr>,
}

impl HandleRecord {
    /// A record of handle `handle` with no addresses, for unit tests.
    #[cfg(test)]
    pub(crate) fn sample(handle: &str) -> HandleRecord {
        HandleRecord {
            handle: handle.into(),
            network: "n".into(),
            container_id: handle.into(),
            ifname: "eth0".into(),
            pod_namespace: None,
            pod_name: None,
            node: "a".into(),
            created: 0,
            addresses: Vec::new(),
        }
    }

    /// A record for `att` on `network`, with no addresses yet.
    pub fn new(network: &str, att: &Attachment, node: &str) -> HandleRecord {
        HandleRecord {
            handle: handle_id(network, &att.container_id, &att.ifname),
            network: network.to_string(),
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
            pod_namespace: att.args.pod_namespace().map(String::from),
            pod_name: att.args.pod_name().map(String::from),
            node: node.to_string(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            addresses: Vec::new(),
        }
    }

    /// Whether `self` and `other` are the same attachment, part by part
    /// (their handles are equal whenever this is, but not only then).
    pub fn same_attachment(&self, other: &HandleRecord) -> bool {
        (&self.network, &self.container_id, &self.ifname)
            == (&other.network, &other.container_id, &other.ifname)
    }

    /// The attachment, for messages: `network "n", container "c", ifname "eth0"`.
    pub fn attachment(&self) -> String {
        format!(
            "network {:?}, container {:?}, ifname {:?}",
            self.network, self.container_id, self.ifname
        )
    }
}
