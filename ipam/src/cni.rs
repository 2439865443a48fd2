//! `margay-ipam` as a CNI IPAM plugin.

use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use margay_conf::dispatch::{Invocation, Plugin};
use margay_conf::env::Attachment;
use margay_conf::margay::IpamConf;
use margay_conf::netconf::AttachmentId;
use margay_conf::result::{CniResult, IpConfig};
use margay_conf::{CniError, Code};

use crate::allocator::Allocator;
use crate::claim::{BlockClaimer, LocalClaimer};
use crate::error::IpamError;
use crate::handle::HandleRecord;
use crate::store::Store;

/// The IPAM plugin, with the block claimer it uses.
pub struct IpamPlugin<C = LocalClaimer> {
    pub claimer: C,
}

impl Default for IpamPlugin {
    fn default() -> Self {
        IpamPlugin {
            claimer: LocalClaimer,
        }
    }
}

fn timeout(conf: &IpamConf) -> Duration {
    Duration::from_millis(conf.lock_timeout_ms)
}

/// Addresses asked for by name: `CNI_ARGS IP=a[,b]`, the `ips` capability
/// or `args.cni.ips`. A prefix length, when given, is ignored: pods get /32
/// and /128 addresses.
fn requested_addresses(inv: &Invocation, att: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
    let from_args = att
        .args
        .get("IP")
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter(|s| !s.is_empty())
        .map(|s| ("CNI_ARGS IP", s.to_string()));
    let from_conf = inv
        .conf
        .requested_ips()
        .into_iter()
        .map(|s| ("runtimeConfig.ips", s));
    from_args
        .chain(from_conf)
        .map(|(field, value)| {
            let addr = value.split('/').next().unwrap_or_default();
            addr.parse().map_err(|_| IpamError::BadRequest {
                field: field.to_string(),
                value: value.clone(),
            })
        })
        .collect()
}

impl<C: BlockClaimer> Plugin for IpamPlugin<C> {
    fn add(&self, inv: &Invocation, att: &Attachment) -> Result<CniResult, CniError> {
        let conf = IpamConf::from_conf(&inv.raw)?;
        let requested = requested_addresses(inv, att)?;
        let record = {
            let store = Store::open(&conf.data_dir, timeout(&conf))?;
            let mut alloc = Allocator::new(&store, &conf, &self.claimer);
            let record = alloc.assign(
                HandleRecord::new(&inv.conf.name, att, &conf.nodename),
                &requested,
            )?;
            store.commit(alloc.into_changes())?;
            record
        }; // The store is closed and unlocked before the reply is written.
        tracing::info!(handle = %record.handle, addresses = ?record.addresses, "assigned");
        Ok(CniResult {
            ips: record
                .addresses
                .iter()
                .map(|ip| IpConfig {
                    address: IpNetwork::from(*ip),
                    gateway: None,
                    interface: None,
                })
                .collect(),
            dns: inv.conf.dns.clone().unwrap_or_default(),
            ..Default::default()
        })
    }

    fn del(&self, inv: &Invocation, att: &Attachment) -> Result<(), CniError> {
        let conf = IpamConf::from_conf(&inv.raw)?;
        let Some(store) = Store::open_existing(&conf.data_dir, timeout(&conf))? else {
            return Ok(());
        };
        let mut alloc = Allocator::new(&store, &conf, &self.claimer);
        let wanted = HandleRecord::new(&inv.conf.name, att, &conf.nodename);
        match alloc.release_attachment(&wanted) {
            Ok(Some(released)) => {
                tracing::info!(handle = %wanted.handle, addresses = ?released.addresses, "released")
            }
            Ok(None) => {}
            // This attachment's ADD was refused for the same reason, so it
            // holds nothing; the other attachment's address is not ours.
            Err(e @ IpamError::HandleTaken { .. }) => {
                tracing::warn!("nothing to release: {e}");
            }
            Err(e) => return Err(e.into()),
        }
        store.commit(alloc.into_changes())?;
        Ok(())
    }

    fn check(&self, inv: &Invocation, att: &Attachment) -> Result<(), CniError> {
        let conf = IpamConf::from_conf(&inv.raw)?;
        let wanted = HandleRecord::new(&inv.conf.name, att, &conf.nodename);
        let handle = &wanted.handle;
        let record = match Store::open_existing(&conf.data_dir, timeout(&conf))? {
            Some(store) => store.handle(handle)?,
            None => None,
        };
        let record = record.ok_or_else(|| {
            CniError::new(
                Code::CheckFailed,
                format!("IPAM holds no allocation for {handle}"),
            )
        })?;
        if !record.same_attachment(&wanted) {
            return Err(CniError::new(
                Code::CheckFailed,
                format!(
                    "IPAM holds no allocation for {}: handle {handle} belongs to {}",
                    wanted.attachment(),
                    record.attachment()
                ),
            ));
        }
        let prev =
            CniResult::from_value(inv.conf.prev_result.as_ref().expect("dispatch requires it"))?;
        for ip in &record.addresses {
            if !prev.ips.iter().any(|c| c.address.ip() == *ip) {
                return Err(CniError::new(
                    Code::CheckFailed,
                    format!("IPAM holds {ip} for {handle}, but prevResult does not list it"),
                ));
            }
        }
        Ok(())
    }

    fn gc(&self, inv: &Invocation, valid: &[AttachmentId]) -> Result<(), CniError> {
        let conf = IpamConf::from_conf(&inv.raw)?;
        let Some(store) = Store::open_existing(&conf.data_dir, timeout(&conf))? else {
            return Ok(());
        };
        let mut alloc = Allocator::new(&store, &conf, &self.claimer);
        for record in store.handles()? {
            let keep = record.network != inv.conf.name
                || valid
                    .iter()
                    .any(|v| v.container_id == record.container_id && v.ifname == record.ifname);
            if !keep {
                alloc.release(&record.handle)?;
                tracing::info!(handle = %record.handle, addresses = ?record.addresses, "garbage-collected");
            }
        }
        store.commit(alloc.into_changes())?;
        Ok(())
    }

    fn status(&self, inv: &Invocation) -> Result<(), CniError> {
        let conf = IpamConf::from_conf(&inv.raw)?;
        let unavailable = |e: IpamError| {
            let e = CniError::from(e);
            match e.code {
                Code::TryAgainLater => e,
                _ => CniError::new(
                    Code::PluginNotAvailable,
                    format!("IPAM cannot serve ADD: {}", e.msg),
                ),
            }
        };
        let Some(store) =
            Store::open_existing(&conf.data_dir, timeout(&conf)).map_err(unavailable)?
        else {
            return Ok(()); // Nothing allocated yet: every pool is whole.
        };
        let alloc = Allocator::new(&store, &conf, &self.claimer);
        for family in alloc.families() {
            if !alloc.can_allocate(family).map_err(unavailable)? {
                return Err(CniError::new(
                    Code::PluginNotAvailable,
                    format!("no pool can supply an IPv{family} address"),
                )
                .with_details(format!(
                    "pools: {}; node: {}",
                    conf.pools
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    conf.nodename
                )));
            }
        }
        Ok(())
    }
}
