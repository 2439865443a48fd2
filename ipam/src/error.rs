//! IPAM failures, and the CNI code each one is reported with.

use std::net::IpAddr;
use std::path::PathBuf;

use margay_conf::agent::Unreachable;
use margay_conf::lock::LockError;
use margay_conf::{CniError, Code};

use crate::handle::HandleRecord;

/// Why an IPAM operation failed. Each variant names the object at fault,
/// and maps to the CNI code the runtime is answered with (`From<IpamError>
/// for CniError`), which tells it whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The store's lock file could not be opened or locked, or another
    /// process held it past `ipam.lock_timeout_ms` ([`LockError::Timeout`], which
    /// is reported as "try again later").
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The store's files are missing, its format marker is absent or
    /// unknown, sled finds it damaged, or an entry does not decode. Margay
    /// refuses to replace such a store, since an empty one would hand out
    /// addresses that running pods hold.
    #[error("IPAM store {path} is corrupt: {reason}")]
    Corrupt {
        /// The store directory (`<data_dir>/store`).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An I/O error reading or writing the store, or creating it.
    #[error("IPAM store {path} cannot be read or written: {reason}")]
    Io {
        /// The store directory (`<data_dir>/store`).
        path: PathBuf,
        /// The operating system's error.
        reason: String,
    },
    /// No address of one family is left: every block of the family's pools
    /// that this node owns is full or fenced, and no new block can be
    /// claimed (or margay-agent found none).
    #[error(
        "no free IPv{family} address: every block of pools {pools} is full or owned by another node"
    )]
    Exhausted {
        /// The IP family, 4 or 6.
        family: u8,
        /// The family's configured pools, comma-separated.
        pools: String,
    },
    /// An address asked for by name cannot be given: another handle holds
    /// it, it is reserved, or its block belongs to another node, is fenced,
    /// or cannot be claimed.
    #[error("requested address {ip} is {holder}")]
    Unavailable {
        /// The address asked for.
        ip: IpAddr,
        /// Who or what keeps it, as a phrase that completes "is".
        holder: String,
    },
    /// An address asked for by name lies in no configured pool.
    #[error("requested address {ip} is outside every pool ({pools})")]
    OutsidePools {
        /// The address asked for.
        ip: IpAddr,
        /// Every configured pool, comma-separated.
        pools: String,
    },
    /// An address asked for by name (`CNI_ARGS IP` or `runtimeConfig.ips`)
    /// does not parse.
    #[error("{field}: {value:?} is not an IP address")]
    BadRequest {
        /// Where the value came from: `CNI_ARGS IP` or `runtimeConfig.ips`.
        field: String,
        /// The value as given.
        value: String,
    },
    /// margay-agent could not be asked for a block, or answered a claim
    /// with something other than a claim's answer.
    #[error("margay-agent at {socket} cannot be reached: {reason}")]
    Agent {
        /// The agent's socket (`ipam.agent_socket`).
        socket: PathBuf,
        /// Why it could not be asked, or what it answered.
        reason: String,
    },
    /// margay-agent was reached but could not claim a block now (it
    /// answered `Unavailable`); a retry may succeed.
    #[error("no block of IPv{family} addresses could be claimed for this node: {reason}")]
    ClaimUnavailable {
        /// The IP family, 4 or 6.
        family: u8,
        /// The agent's reason.
        reason: String,
    },
    /// The handle this attachment maps to is recorded for a different
    /// attachment: network names or container IDs with dots made two
    /// attachments' handles equal (see [`handle_id`](crate::handle::handle_id)).
    #[error("IPAM handle {handle:?} already belongs to {holder}, not to {wanted}")]
    HandleTaken {
        /// The shared handle.
        handle: String,
        /// The attachment recorded under it, as [`HandleRecord::attachment`] says.
        holder: String,
        /// The attachment that asked, likewise.
        wanted: String,
    },
}

impl IpamError {
    /// The error for `wanted`'s handle being held by `held`, another
    /// attachment: both are named, so the operator can tell them apart.
    pub fn handle_taken(held: &HandleRecord, wanted: &HandleRecord) -> IpamError {
        IpamError::HandleTaken {
            handle: wanted.handle.clone(),
            holder: held.attachment(),
            wanted: wanted.attachment(),
        }
    }
}

impl From<Unreachable> for IpamError {
    fn from(e: Unreachable) -> IpamError {
        IpamError::Agent {
            socket: e.socket,
            reason: e.reason,
        }
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        let code = match &e {
            IpamError::Lock(LockError::Timeout { .. })
            | IpamError::Agent { .. }
            | IpamError::ClaimUnavailable { .. } => Code::TryAgainLater,
            IpamError::Lock(_) | IpamError::Io { .. } => Code::IoFailure,
            IpamError::Corrupt { .. } => Code::StoreCorrupt,
            IpamError::Exhausted { .. } => Code::PoolExhausted,
            IpamError::Unavailable { .. } => Code::AddressInUse,
            IpamError::OutsidePools { .. } => Code::AddressOutsidePools,
            IpamError::BadRequest { field, .. } if field == "CNI_ARGS IP" => {
                Code::InvalidEnvironment
            }
            IpamError::BadRequest { .. } => Code::InvalidNetworkConfig,
            // The container ID (or the network name) makes the handle
            // collide: retrying cannot help while the other attachment holds it.
            IpamError::HandleTaken { .. } => Code::InvalidEnvironment,
        };
        let hint = match &e {
            IpamError::Corrupt { .. } => {
                "Margay will not replace it with an empty store, which would hand out \
                 addresses that running pods hold. Restore it from a backup, or drain the \
                 node before moving it aside."
            }
            IpamError::HandleTaken { .. } => {
                "The handle <network>.<CNI_CONTAINERID>.<CNI_IFNAME> cannot tell these \
                 attachments apart because their network name or container ID contains \
                 dots. The other attachment keeps its address; use a network name or \
                 container ID that does not collide."
            }
            IpamError::Agent { .. } => {
                "With ipam.datastore kubernetes, the node's margay-agent claims address \
                 blocks in the Kubernetes API; this node has no free address left and its \
                 agent did not answer. Check the margay-node pod on this node."
            }
            _ => "",
        };
        CniError::new(code, e.to_string()).with_details(hint)
    }
}
