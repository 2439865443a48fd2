//! The `margay` plugin's CNI verbs.

use std::any::Any;
use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};

use ipnetwork::IpNetwork;
use margay_conf::dispatch::{Invocation, Plugin};
use margay_conf::env::{Attachment, Command};
use margay_conf::error::panic_message;
use margay_conf::margay::PluginConf;
use margay_conf::netconf::AttachmentId;
use margay_conf::result::{CniResult, Interface, IpConfig, Route, format_mac};
use margay_conf::{CniError, Code};

use crate::dataplane::{self, Dataplane};
use crate::endpoint::{self, Endpoint, Existing};
use crate::ipam;
use crate::link::{self, HOST_MAC};
use crate::names::{alias, host_ifname, parse_alias};
use crate::netlink::{Netlink, open_netns};

/// The `margay` plugin that the binary runs: each verb wires or unwires
/// one pod, delegates its addresses to the plugin named in `ipam.type`, and
/// hands the endpoint to the dataplane named in `dataplane`. A failed ADD
/// undoes what it did itself, and nothing a running pod uses.
pub struct MargayPlugin;

/// The netns of an ADD or CHECK (the environment check guarantees one).
fn netns_of(att: &Attachment) -> &std::path::Path {
    att.netns
        .as_deref()
        .expect("ADD and CHECK require CNI_NETNS")
}

fn prev_result(inv: &Invocation) -> Result<Option<CniResult>, CniError> {
    inv.conf
        .prev_result
        .as_ref()
        .map(CniResult::from_value)
        .transpose()
}

/// The ADD result: whatever earlier plugins reported, then our two
/// interfaces, our addresses on the pod interface, and the pod's routes.
fn build_result(
    prev: Option<CniResult>,
    ipam: CniResult,
    ep: &Endpoint,
    inv: &Invocation,
    att: &Attachment,
    mtu: u32,
) -> CniResult {
    let mut result = prev.unwrap_or_default();
    let host_index = result.interfaces.len();
    result.interfaces.push(Interface {
        name: ep.host.name.clone(),
        mac: Some(format_mac(&HOST_MAC)),
        mtu: Some(mtu),
        ..Default::default()
    });
    result.interfaces.push(Interface {
        name: att.ifname.clone(),
        mac: ep.pod.mac.as_ref().map(format_mac),
        mtu: Some(mtu),
        sandbox: netns_of(att).display().to_string(),
        ..Default::default()
    });
    let pod_index = host_index + 1;
    result.ips.extend(ep.addresses.iter().map(|ip| IpConfig {
        address: IpNetwork::from(*ip),
        gateway: None,
        interface: Some(pod_index),
    }));
    for r in endpoint::pod_routes(ep.pod.index, &ep.addresses) {
        result.routes.push(Route {
            scope: r.link_scope.then_some(253),
            ..Route::new(r.dst, r.gw)
        });
    }
    let dns = inv
        .conf
        .dns
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or(ipam.dns);
    if !dns.is_empty() {
        result.dns = dns;
    }
    result
}

/// What an ADD found and did, so that a failure undoes exactly its own
/// part: a retried ADD of a working pod must leave that pod as it was.
#[derive(Debug, Default)]
struct Progress {
    /// Whether a working pair of ours was there; `None` when looking failed.
    found: Option<Existing>,
    /// This ADD created the pair.
    created: bool,
}

impl Progress {
    /// What a failed ADD undoes: the pair (and its endpoint state) if it
    /// created it; the allocation if no wired pod of this attachment was
    /// there to use it and IPAM may hold one. A pair from an earlier ADD,
    /// and the allocation it uses, stay: the pod is running on them.
    fn undo(&self, ipam_refused: bool) -> Undo {
        Undo {
            pair: self.created,
            allocation: self.found == Some(Existing::Nothing) && !ipam_refused,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Undo {
    pair: bool,
    allocation: bool,
}

/// A panic in ADD as the error it reports once it has rolled back (the
/// dispatcher would report the same code, but after skipping the rollback).
fn bug(panic: Box<dyn Any + Send>) -> CniError {
    let what = panic_message(&*panic).unwrap_or_else(|| "unknown panic".into());
    CniError::new(Code::Internal, "internal error in Margay (please report)").with_details(what)
}

/// Runs `f`, turning a panic into [`bug`] so that ADD can still roll back.
fn catching<T>(f: impl FnOnce() -> Result<T, CniError>) -> Result<T, CniError> {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| Err(bug(panic)))
}

/// IPAM commits only when it succeeds: an error it answered itself means
/// it holds nothing new. When it could not be run or read, or something
/// panicked, it may hold an allocation.
fn refused<T>(allocated: &Result<T, CniError>) -> bool {
    matches!(allocated,
        Err(e) if !matches!(e.code, Code::DelegateFailed | Code::Internal))
}

/// Undoes what [`Progress::undo`] says; failures to undo are logged, the
/// ADD's own error is what the runtime hears. `host` is `None` when ADD
/// could not open its netlink connection, before it looked at or created
/// anything.
fn rollback(
    progress: &Progress,
    ipam_refused: bool,
    dataplane: &dyn Dataplane,
    host: Option<&Netlink>,
    host_name: &str,
    release: impl FnOnce() -> Result<(), CniError>,
) {
    let plan = progress.undo(ipam_refused);
    if progress.found.is_none() && !ipam_refused {
        tracing::warn!(
            host = %host_name,
            "ADD failed before it could tell whether the pod was already wired: \
             its allocation is kept for the runtime's DEL to release"
        );
    }
    let mut undo = Vec::new();
    if plan.pair {
        undo.push(dataplane.forget(host_name));
        // A pair is only ever created over the host connection.
        if let Some(host) = host {
            undo.push(endpoint::remove(host, host_name).map(drop));
        }
    }
    if plan.allocation {
        undo.push(release());
    }
    for failed in undo.into_iter().filter_map(Result::err) {
        tracing::error!("rolling back a failed ADD: {failed}");
    }
}

/// GC's reply from what failed: one failure as it is (code included);
/// several under the code of the first, unless one of them says to try
/// again later, which a retry may then clear altogether.
fn gc_outcome(errors: Vec<CniError>) -> Result<(), CniError> {
    let Some(first) = errors.first() else {
        return Ok(());
    };
    if errors.len() == 1 {
        return Err(first.clone().context("GC"));
    }
    let code = if errors.iter().any(|e| e.code == Code::TryAgainLater) {
        Code::TryAgainLater
    } else {
        first.code
    };
    Err(
        CniError::new(code, format!("GC finished with {} errors", errors.len())).with_details(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
    )
}

impl Plugin for MargayPlugin {
    fn add(&self, inv: &Invocation, att: &Attachment) -> Result<CniResult, CniError> {
        let conf = PluginConf::from_conf(&inv.raw)?;
        let dataplane = dataplane::select(&conf)?;
        let prev = prev_result(inv)?;
        let netns = open_netns(netns_of(att))?;
        let ipam_type = &conf.ipam.plugin_type;
        // IPAM runs in its own process and is the critical path, so it
        // starts as soon as the request is known to be valid; meanwhile this
        // one checks the pod, creates the pair, readies both ends and
        // attaches the dataplane (which may wait on the kernel). Only
        // addresses and routes wait for IPAM.
        let mut allocating = ipam::start(inv, att, Command::Add, ipam_type);
        let host_name = host_ifname(&inv.conf.name, &att.container_id, &att.ifname);
        let alias = alias(&inv.conf.name, &att.container_id, &att.ifname);
        let mut progress = Progress::default();
        let host = match Netlink::open() {
            Ok(host) => host,
            Err(e) => {
                // Nothing looked at, nothing created: IPAM is waited for and
                // whatever it gave is kept for the runtime's DEL (the pod
                // may be running on it), as `Progress::undo` says.
                let allocated = catching(|| allocating.finish_add());
                rollback(
                    &progress,
                    refused(&allocated),
                    &*dataplane,
                    None,
                    &host_name,
                    || ipam::del(inv, att, ipam_type),
                );
                return Err(e);
            }
        };
        let linked = catching(|| {
            let pod = host.open_in(&netns)?;
            let found = endpoint::survey(&host, &pod, &host_name, &att.ifname)?;
            progress.found = Some(found.existing());
            let existing = endpoint::prepare(&host, found, &att.ifname)?;
            if existing == Existing::Nothing {
                endpoint::create(&host, &netns, &host_name, &att.ifname, conf.mtu)?;
                progress.created = true;
            }
            let links = endpoint::ready(&host, &pod, &host_name, &att.ifname, &alias)?;
            dataplane.attach(&host_name)?;
            Ok((existing, pod, links))
        });
        // IPAM's reply is read as soon as it is printed; its process exits
        // while the addresses are configured, and its exit status then
        // confirms the reply before anything is reported. An error IPAM
        // printed itself means it holds nothing new (for the rollback).
        let allocated = catching(|| allocating.early_add());
        let ipam_refused = refused(&allocated);
        let registered = linked.and_then(|(existing, pod, links)| {
            let ipam_result = allocated?;
            catching(|| {
                let addresses: Vec<IpAddr> =
                    ipam_result.ips.iter().map(|c| c.address.ip()).collect();
                let ep = endpoint::configure(&host, &pod, links, &addresses)?;
                dataplane.register(&ep)?;
                dataplane.enforce_policy(&ep, att)?;
                Ok(ep)
            })
            .map(|ep| (existing, ipam_result, ep))
        });
        // Always waited for, also when something failed: the process is
        // reaped and a nonzero exit after a printed result fails the ADD.
        let confirmed = catching(|| allocating.finish_add());
        let registered = registered.and_then(|done| confirmed.map(|_| done));
        let (existing, ipam_result, ep) = match registered {
            Ok(done) => done,
            Err(e) => {
                rollback(
                    &progress,
                    ipam_refused,
                    &*dataplane,
                    Some(&host),
                    &host_name,
                    || ipam::del(inv, att, ipam_type),
                );
                return Err(e);
            }
        };
        let addresses = &ep.addresses;
        tracing::info!(host = %host_name, addresses = ?addresses, reused = (existing == Existing::OurPair), "endpoint wired");
        Ok(build_result(prev, ipam_result, &ep, inv, att, conf.mtu))
    }

    fn del(&self, inv: &Invocation, att: &Attachment) -> Result<(), CniError> {
        let conf = PluginConf::from_conf(&inv.raw)?;
        // IPAM releases in its own process while the kernel unregisters the
        // pair (which waits for RCU callbacks: the slow part of a DEL). The
        // netns is not needed: the host side takes the pair with it.
        let releasing = ipam::start(inv, att, Command::Del, &conf.ipam.plugin_type);
        let host_name = host_ifname(&inv.conf.name, &att.container_id, &att.ifname);
        // The dataplane forgets the endpoint (map entries, conntrack, which
        // grow with the node's endpoints and flows) while the kernel
        // unregisters the pair: neither needs the other, and forgetting
        // works by name once the interface is gone.
        let removed = dataplane::select(&conf).and_then(|dataplane| {
            let (forgotten, removed) = std::thread::scope(|s| {
                let forgetting = s.spawn(|| dataplane.forget(&host_name));
                let removed = Netlink::open().and_then(|nl| endpoint::remove(&nl, &host_name));
                let forgotten = forgetting
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (forgotten, removed)
            });
            forgotten?;
            removed
        });
        let released = releasing.finish();
        if removed? {
            tracing::info!(host = %host_name, "endpoint removed");
        }
        released
    }

    fn check(&self, inv: &Invocation, att: &Attachment) -> Result<(), CniError> {
        let conf = PluginConf::from_conf(&inv.raw)?;
        let dataplane = dataplane::select(&conf)?;
        let prev = prev_result(inv)?.expect("dispatch requires prevResult for CHECK");
        let pod_index = prev
            .interfaces
            .iter()
            .position(|i| i.name == att.ifname && !i.sandbox.is_empty())
            .ok_or_else(|| {
                CniError::new(
                    Code::CheckFailed,
                    format!("prevResult has no interface {} in a sandbox", att.ifname),
                )
            })?;
        let addresses: Vec<IpAddr> = prev
            .ips
            .iter()
            .filter(|c| c.interface == Some(pod_index))
            .map(|c| c.address.ip())
            .collect();
        let netns = open_netns(netns_of(att))?;
        let host = Netlink::open()?;
        let pod = host.open_in(&netns)?;
        let host_name = host_ifname(&inv.conf.name, &att.container_id, &att.ifname);
        let ep = endpoint::check(&host, &pod, &host_name, &att.ifname, &addresses)?;
        dataplane.check(&ep)?;
        ipam::check(inv, att, &conf.ipam.plugin_type)
    }

    fn gc(&self, inv: &Invocation, valid: &[AttachmentId]) -> Result<(), CniError> {
        let conf = PluginConf::from_conf(&inv.raw)?;
        let dataplane = dataplane::select(&conf)?;
        let host = Netlink::open()?;
        let mut errors = Vec::new();
        for l in host.run(link::list(&host.handle))? {
            let Some((network, container_id, ifname)) = l.alias.as_deref().and_then(parse_alias)
            else {
                continue;
            };
            let still_valid = valid
                .iter()
                .any(|v| v.container_id == container_id && v.ifname == ifname);
            if network != inv.conf.name || still_valid {
                continue;
            }
            let removed = dataplane
                .forget(&l.name)
                .and_then(|()| host.run(link::delete(&host.handle, l.index)));
            match removed {
                Ok(_) => {
                    tracing::info!(host = %l.name, container = container_id, "garbage-collected endpoint")
                }
                Err(e) => errors.push(e.context(&l.name)),
            }
        }
        match dataplane.forget_vanished(&host) {
            Ok(forgotten) => {
                for name in forgotten {
                    tracing::info!(host = %name, "forgot an endpoint whose veth vanished");
                }
            }
            Err(e) => errors.push(e.context("forgetting endpoints whose veth vanished")),
        }
        if let Err(e) = ipam::network_call(inv, Command::Gc, &conf.ipam.plugin_type, Some(valid)) {
            errors.push(e);
        }
        gc_outcome(errors)
    }

    fn status(&self, inv: &Invocation) -> Result<(), CniError> {
        let conf = PluginConf::from_conf(&inv.raw)?;
        dataplane::select(&conf)
            .and_then(|dataplane| dataplane.ready())
            .map_err(|e| CniError::new(Code::PluginNotAvailable, e.msg).with_details(e.details))?;
        ipam::network_call(inv, Command::Status, &conf.ipam.plugin_type, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(found: Option<Existing>, created: bool) -> Progress {
        Progress { found, created }
    }

    #[test]
    fn a_failed_add_undoes_only_its_own_part() {
        let both = Undo {
            pair: true,
            allocation: true,
        };
        let nothing = Undo {
            pair: false,
            allocation: false,
        };
        // A first ADD that created the pair and got an address.
        assert_eq!(progress(Some(Existing::Nothing), true).undo(false), both);
        // A retried ADD of a working pod: neither its pair nor its address.
        assert_eq!(
            progress(Some(Existing::OurPair), false).undo(false),
            nothing
        );
        assert_eq!(progress(Some(Existing::OurPair), false).undo(true), nothing);
        // IPAM refused: it holds nothing new to release.
        assert_eq!(
            progress(Some(Existing::Nothing), true).undo(true),
            Undo {
                pair: true,
                allocation: false
            }
        );
        // The pod could not be looked at: its allocation may be in use.
        assert_eq!(progress(None, false).undo(false), nothing);
        // The pod's ifname was taken: no pair, but the address goes back.
        assert_eq!(
            progress(Some(Existing::Nothing), false).undo(false),
            Undo {
                pair: false,
                allocation: true
            }
        );
    }

    #[test]
    fn gc_keeps_the_code_of_what_failed() {
        assert_eq!(gc_outcome(vec![]), Ok(()));
        let busy = CniError::new(Code::TryAgainLater, "IPAM margay-ipam GC: lock busy");
        let kernel = CniError::new(Code::Kernel, "mrg0: gone");
        let alone = gc_outcome(vec![busy.clone()]).unwrap_err();
        assert_eq!(alone.code, Code::TryAgainLater);
        assert!(alone.msg.starts_with("GC: IPAM"), "{alone}");
        let both = gc_outcome(vec![kernel.clone(), busy]).unwrap_err();
        assert_eq!(both.code, Code::TryAgainLater, "a retry may clear both");
        assert!(both.details.contains("mrg0: gone"), "{both}");
        let corrupt = CniError::new(Code::StoreCorrupt, "store is corrupt");
        assert_eq!(
            gc_outcome(vec![corrupt, kernel]).unwrap_err().code,
            Code::StoreCorrupt
        );
    }

    #[test]
    fn a_panic_becomes_code_199_with_its_message() {
        let caught = catching::<()>(|| panic!("boom in ADD"));
        let e = caught.unwrap_err();
        assert_eq!(e.code, Code::Internal);
        assert!(e.details.contains("boom in ADD"), "{e}");
        assert_eq!(catching(|| Ok::<_, CniError>(7)).unwrap(), 7);
    }
}
