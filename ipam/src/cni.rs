//! `margay-ipam` as a CNI IPAM plugin.

use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use margay_conf::dispatch::{Invocation, Plugin};
use margay_conf::env::Attachment;
use margay_conf::margay::{Datastore, IpamConf};
use margay_conf::netconf::AttachmentId;
use margay_conf::result::{CniResult, IpConfig};
use margay_conf::{CniError, Code};

use crate::allocator::{Allocator, families};
use crate::error::IpamError;
use crate::handle::HandleRecord;
use crate::store::Store;
use margay_conf::agent::{self, Answer, Request};

/// The IPAM plugin that `margay-ipam` runs when `CNI_COMMAND` is set: each
/// verb opens the store, does its work in one transaction and closes it, so
/// concurrent calls on the node take turns on the store's lock.
#[derive(Debug, Default, Clone, Copy)]
pub struct IpamPlugin;

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

/// Assigns `record` its addresses in one transaction. The store is closed
/// and unlocked when this returns.
fn assign(
    conf: &IpamConf,
    record: HandleRecord,
    requested: &[IpAddr],
) -> Result<HandleRecord, IpamError> {
    let store = Store::open(&conf.data_dir, timeout(conf))?;
    let mut alloc = Allocator::new(&store, conf);
    let record = alloc.assign(record, requested)?;
    store.commit(alloc.into_changes())?;
    Ok(record)
}

/// Runs `assign` until it succeeds or fails otherwise than for want of a
/// family's address. With the Kubernetes datastore the agent keeps
/// headroom, so the node is out of addresses only in a burst: then the
/// store is closed (`assign` has returned), the agent is asked (`claim`)
/// for the family and the ADD tries again, once per family the pod gets,
/// however many pools the family has (the agent claims from all of them).
fn assign_claiming(
    datastore: Datastore,
    mut assign: impl FnMut() -> Result<HandleRecord, IpamError>,
    mut claim: impl FnMut(u8) -> Result<(), IpamError>,
) -> Result<HandleRecord, IpamError> {
    let mut claimed = Vec::new();
    loop {
        match assign() {
            Err(IpamError::Exhausted { family, .. })
                if datastore == Datastore::Kubernetes && !claimed.contains(&family) =>
            {
                claimed.push(family);
                claim(family)?;
            }
            other => return other,
        }
    }
}

/// Asks margay-agent for a free IPv`family` address on the node (it claims
/// a block in the Kubernetes API when the node has none).
fn claim_through_agent(conf: &IpamConf, family: u8) -> Result<(), IpamError> {
    let request = Request::Claim { family };
    match agent::ask(&conf.agent_socket, &request, timeout(conf))? {
        Answer::Ready { block } => {
            tracing::info!(?block, family, "margay-agent made an address free");
            Ok(())
        }
        Answer::Exhausted { pools } => Err(IpamError::Exhausted { family, pools }),
        Answer::Unavailable { reason } => Err(IpamError::ClaimUnavailable { family, reason }),
        other => Err(IpamError::Agent {
            socket: conf.agent_socket.clone(),
            reason: format!("it answered a claim with {other:?}"),
        }),
    }
}

impl Plugin for IpamPlugin {
    fn add(&self, inv: &Invocation, att: &Attachment) -> Result<CniResult, CniError> {
        let conf = IpamConf::from_conf(&inv.raw)?;
        let requested = requested_addresses(inv, att)?;
        let new_record = || HandleRecord::new(&inv.conf.name, att, &conf.nodename);
        let record = assign_claiming(
            conf.datastore,
            || assign(&conf, new_record(), &requested),
            |family| claim_through_agent(&conf, family),
        )?;
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
        let mut alloc = Allocator::new(&store, &conf);
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
        let mut alloc = Allocator::new(&store, &conf);
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
        // Families the node has no free address of now.
        let short: Vec<u8> =
            match Store::open_existing(&conf.data_dir, timeout(&conf)).map_err(unavailable)? {
                Some(store) => {
                    let alloc = Allocator::new(&store, &conf);
                    let mut short = Vec::new();
                    for family in families(&conf.pools) {
                        if !alloc.can_allocate(family).map_err(unavailable)? {
                            short.push(family);
                        }
                    }
                    short
                }
                // Nothing allocated yet: every pool is whole, but with the
                // Kubernetes datastore the node holds no block yet either.
                None if conf.datastore == Datastore::Kubernetes => families(&conf.pools).collect(),
                None => Vec::new(),
            };
        for family in short {
            if conf.datastore == Datastore::Kubernetes {
                // The agent claims now what the next ADD would ask for.
                claim_through_agent(&conf, family).map_err(unavailable)?;
                continue;
            }
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn exhausted(family: u8) -> IpamError {
        IpamError::Exhausted {
            family,
            pools: String::new(),
        }
    }

    /// Runs [`assign_claiming`] with `assign` answering `answers` in turn
    /// (then success); returns the families the agent was asked for and
    /// the family of the final error, if any.
    fn run(datastore: Datastore, answers: &[Option<u8>]) -> (Vec<u8>, Option<u8>) {
        let answers = RefCell::new(answers.iter().copied());
        let asked = RefCell::new(Vec::new());
        let result = assign_claiming(
            datastore,
            || match answers.borrow_mut().next().flatten() {
                Some(family) => Err(exhausted(family)),
                None => Ok(HandleRecord::sample("n.c.eth0")),
            },
            |family| {
                asked.borrow_mut().push(family);
                Ok(())
            },
        );
        let failed = match result {
            Ok(_) => None,
            Err(IpamError::Exhausted { family, .. }) => Some(family),
            Err(e) => panic!("{e}"),
        };
        (asked.into_inner(), failed)
    }

    #[test]
    fn the_agent_is_asked_once_for_each_family_the_pod_lacks() {
        // Dual-stack, both families short: each asked for once.
        assert_eq!(
            run(Datastore::Kubernetes, &[Some(4), Some(6), None]),
            (vec![4, 6], None)
        );
        // The IPv4 address the agent made free was taken meanwhile: the ADD
        // fails for IPv4, which was asked for once, rather than asking again
        // with IPv6's turn and then failing for IPv6, never asked for.
        assert_eq!(
            run(Datastore::Kubernetes, &[Some(4), Some(4), Some(6), None]),
            (vec![4], Some(4))
        );
        assert_eq!(
            run(Datastore::Kubernetes, &[Some(4), Some(6), Some(6)]),
            (vec![4, 6], Some(6))
        );
        // The local datastore claims blocks itself: no agent.
        assert_eq!(run(Datastore::Local, &[Some(4), None]), (vec![], Some(4)));
        assert_eq!(run(Datastore::Kubernetes, &[None]), (vec![], None));
    }
}
