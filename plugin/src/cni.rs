//! The `margay` plugin's CNI verbs.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use margay_conf::dispatch::{Invocation, Plugin};
use margay_conf::env::{Attachment, Command};
use margay_conf::margay::PluginConf;
use margay_conf::netconf::AttachmentId;
use margay_conf::result::{CniResult, Interface, IpConfig, Route};
use margay_conf::{CniError, Code};

use crate::dataplane;
use crate::endpoint::{self, Endpoint, Existing};
use crate::ipam;
use crate::link::{self, HOST_MAC, format_mac};
use crate::names::{alias, host_ifname, parse_alias};
use crate::netlink::{Netlink, open_netns};

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
        let host = match Netlink::open() {
            Ok(host) => host,
            Err(e) => {
                // Nothing of ours exists yet but what IPAM may have given.
                if allocating.finish_add().is_ok()
                    && let Err(failed) = ipam::del(inv, att, ipam_type)
                {
                    tracing::error!("rolling back a failed ADD: {failed}");
                }
                return Err(e);
            }
        };
        let linked = host.open_in(&netns).and_then(|pod| {
            let existing = endpoint::prepare(&host, &pod, &host_name, &att.ifname)?;
            if existing == Existing::Nothing {
                endpoint::create(&host, &netns, &host_name, &att.ifname, conf.mtu)?;
            }
            let links = endpoint::ready(&host, &pod, &host_name, &att.ifname, &alias)?;
            dataplane.attach(&host_name)?;
            Ok((existing, pod, links))
        });
        // IPAM's reply is read as soon as it is printed; its process exits
        // while the addresses are configured, and its exit status then
        // confirms the reply before anything is reported.
        let allocated = allocating.early_add();
        let registered = linked.and_then(|(existing, pod, links)| {
            let ipam_result = allocated?;
            let addresses: Vec<IpAddr> = ipam_result.ips.iter().map(|c| c.address.ip()).collect();
            let ep = endpoint::configure(&host, &pod, links, &addresses)?;
            dataplane.register(&ep)?;
            Ok((existing, ipam_result, ep))
        });
        let confirmed = allocating.finish_add();
        let registered = registered.and_then(|done| confirmed.map(|_| done));
        let (existing, ipam_result, ep) = match registered {
            Ok(done) => done,
            Err(e) => {
                // Undo everything: no endpoint state, no veth (its programs
                // and routes go with it), no allocation.
                let undo = [
                    dataplane.forget(&host_name),
                    endpoint::remove(&host, &host_name).map(drop),
                    ipam::del(inv, att, ipam_type),
                ];
                for failed in undo.into_iter().filter_map(Result::err) {
                    tracing::error!("rolling back a failed ADD: {failed}");
                }
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
            let removed = dataplane::select(&conf)
                .and_then(|dp| dp.forget(&l.name))
                .and_then(|()| host.run(link::delete(&host.handle, l.index)));
            match removed {
                Ok(_) => {
                    tracing::info!(host = %l.name, container = container_id, "garbage-collected endpoint")
                }
                Err(e) => errors.push(format!("{}: {e}", l.name)),
            }
        }
        if let Err(e) = ipam::network_call(inv, Command::Gc, &conf.ipam.plugin_type, Some(valid)) {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                Code::Kernel,
                format!("GC finished with {} error(s)", errors.len()),
            )
            .with_details(errors.join("; ")))
        }
    }

    fn status(&self, inv: &Invocation) -> Result<(), CniError> {
        let conf = PluginConf::from_conf(&inv.raw)?;
        dataplane::select(&conf)
            .map_err(|e| CniError::new(Code::PluginNotAvailable, e.msg).with_details(e.details))?;
        ipam::network_call(inv, Command::Status, &conf.ipam.plugin_type, None)
    }
}
