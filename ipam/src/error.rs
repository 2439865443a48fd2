//! IPAM failures, and the CNI code each one is reported with.

use std::net::IpAddr;
use std::path::PathBuf;

use margay_conf::agent::Unreachable;
use margay_conf::lock::LockError;
use margay_conf::{CniError, Code};

use crate::handle::HandleRecord;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("IPAM store {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("IPAM store {path} cannot be read or written: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error(
        "no free IPv{family} address: every block of pools {pools} is full or owned by another node"
    )]
    Exhausted { family: u8, pools: String },
    #[error("requested address {ip} is {holder}")]
    Unavailable { ip: IpAddr, holder: String },
    #[error("requested address {ip} is outside every pool ({pools})")]
    OutsidePools { ip: IpAddr, pools: String },
    #[error("{field}: {value:?} is not an IP address")]
    BadRequest { field: String, value: String },
    #[error("margay-agent at {socket} cannot be reached: {reason}")]
    Agent { socket: PathBuf, reason: String },
    #[error("no block of IPv{family} addresses could be claimed for this node: {reason}")]
    ClaimUnavailable { family: u8, reason: String },
    #[error("IPAM handle {handle:?} already belongs to {holder}, not to {wanted}")]
    HandleTaken {
        handle: String,
        holder: String,
        wanted: String,
    },
}

impl IpamError {
    /// `wanted`'s handle is held by `held`, another attachment.
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
