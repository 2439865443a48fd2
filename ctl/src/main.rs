//! `margayctl`: inspect and program the eBPF dataplane of this node.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use margay_conf::report::table;
use margay_ctl::{policy_summary, read_yaml, resolve};
use margay_ebpf::abi::EXT_MODE_DSR;
use margay_ebpf::inspect::{self, CtRecord, NatRecord};
use margay_ebpf::ip_set::IpSetTable;
use margay_ebpf::node::Node;
use margay_ebpf::{cluster, nodeport, policy, registry, service};
use margay_model::ip_set::IpSets;
use margay_model::peer::PeerFile;
use margay_model::policy::PolicySpec;
use margay_model::service::ServiceFile;

#[derive(Parser)]
#[command(version, about = "Inspect and program Margay's eBPF dataplane")]
struct Cli {
    /// The BPF root the network configuration names (`bpf_root`).
    #[arg(
        long,
        global = true,
        env = "MARGAY_BPF_ROOT",
        default_value = "/sys/fs/bpf/margay"
    )]
    bpf_root: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Endpoints: host veth, ifindex, IP, attached programs, policy.
    Endpoints,
    /// Allowed packets/bytes and drops by reason, per endpoint.
    Counters {
        /// Host veth name, ifindex or pod IP.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Connection tracking.
    Conntrack {
        #[command(subcommand)]
        action: CtAction,
    },
    /// Per-endpoint policy.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Dropped packets with their reason, from the programs' event ring
    /// (needs `bpf_log_level` info or debug).
    Drops {
        /// Keep printing as drops happen (until interrupted).
        #[arg(long)]
        follow: bool,
    },
    /// Services (kube-proxy's job): frontends and their backends.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Service address translations of running flows.
    Nat {
        #[command(subcommand)]
        action: NatAction,
    },
    /// The node's data interfaces, where NodePorts answer.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Node-wide dataplane operations.
    Dataplane {
        #[command(subcommand)]
        action: DataplaneAction,
    },
}

#[derive(Subcommand)]
enum CtAction {
    /// List tracked flows.
    Dump {
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Forget tracked flows (new packets are judged by policy again).
    Flush {
        #[arg(long)]
        endpoint: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Replace an endpoint's policy with the rules in a YAML or JSON file.
    Set {
        #[arg(long)]
        endpoint: String,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Show policies (all endpoints, or one).
    Show {
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// The node's sets of addresses that rules name (`set:`): with -f,
    /// made those of a YAML or JSON file (a set missing from it goes once
    /// no rule names it); without, shown.
    Sets {
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ServiceAction {
    /// Make the node's services exactly those of a YAML or JSON file
    /// (`services: [...]`): changes applied, the rest left alone.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// The services the node balances.
    List,
}

#[derive(Subcommand)]
enum NatAction {
    /// List translations (forward and reverse entries of each flow).
    Dump,
}

#[derive(Subcommand)]
enum NodeAction {
    /// Put `from_net` on a data interface and open NodePorts on its IPv4
    /// addresses (those of services applied already too); set up the
    /// tunnel to other nodes.
    Attach {
        #[arg(long)]
        iface: String,
        /// How NodePort traffic reaches backends on other nodes.
        #[arg(long, default_value = "tunnel")]
        external_mode: cluster::ExternalMode,
    },
    /// Make the node know exactly the other nodes of a YAML or JSON file
    /// (`peers: [...]`): where their pods are, routes to them.
    Peers {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Take `from_net` off a data interface and forget its addresses.
    Detach {
        #[arg(long)]
        iface: String,
    },
    /// The data interfaces and NodePort addresses.
    Show,
}

#[derive(Subcommand)]
enum DataplaneAction {
    /// Detach the programs from every endpoint and forget them (switching a
    /// node back to `"dataplane": "linux"`).
    DetachAll,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("margayctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the binary's output. A reader that went away (`| head`) ends
/// the program quietly, as it does for the standard tools.
fn emit(text: String) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("margayctl: writing the output: {e}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
}

/// Prints `rows` as JSON, or as a table of `header` with a row of `cells`
/// for each.
fn emit_rows<T: serde::Serialize>(
    as_json: bool,
    rows: &[T],
    header: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) {
    emit(if as_json {
        json(&rows)
    } else {
        table(header, &rows.iter().map(cells).collect::<Vec<_>>())
    });
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("records serialize")
}

fn run(cli: Cli) -> Result<(), String> {
    let root = cli.bpf_root.as_path();
    if !margay_ebpf::paths::map_path(root, "endpoints").exists() {
        return Err(format!(
            "no Margay dataplane is loaded at {} (check --bpf-root / MARGAY_BPF_ROOT against the \
             network configuration's bpf_root; programs are loaded by margay-install or the first \
             pod in bpf mode)",
            root.display()
        ));
    }
    match cli.command {
        Cmd::Endpoints => endpoints(root, cli.json),
        Cmd::Counters { endpoint: which } => counters(root, cli.json, which),
        Cmd::Conntrack { action } => conntrack(root, cli.json, action),
        Cmd::Policy { action } => policy_cmd(root, cli.json, action),
        Cmd::Drops { follow } => drops(root, cli.json, follow),
        Cmd::Service { action } => service_cmd(root, cli.json, action),
        Cmd::Nat { action } => nat(root, cli.json, action),
        Cmd::Node { action } => node(root, cli.json, action),
        Cmd::Dataplane { action } => dataplane(root, action),
    }
}

fn err(e: margay_ebpf::DataplaneError) -> String {
    e.to_string()
}

/// The endpoint `which` names (host veth, ifindex or pod IP), if given.
fn endpoint(
    root: &Path,
    which: &Option<String>,
) -> Result<Option<margay_ebpf::abi::Endpoint>, String> {
    which.as_deref().map(|w| resolve(root, w)).transpose()
}

/// `margayctl endpoints`.
fn endpoints(root: &Path, json_out: bool) -> Result<(), String> {
    let rows = margay_ctl::endpoints(root).map_err(err)?;
    emit_rows(
        json_out,
        &rows,
        &[
            "IFNAME", "IFINDEX", "IP", "IPV6", "POD-MAC", "PROGRAMS", "INGRESS", "EGRESS",
        ],
        |r| {
            vec![
                r.ifname.clone(),
                r.ifindex.to_string(),
                r.ip.to_string(),
                r.ipv6.map_or("-".into(), |a| a.to_string()),
                r.mac.clone(),
                if r.programs.is_empty() {
                    "-".into()
                } else {
                    r.programs.join(",")
                },
                policy_summary(&r.policy.ingress),
                policy_summary(&r.policy.egress),
            ]
        },
    );
    Ok(())
}

/// `margayctl counters`.
fn counters(root: &Path, json_out: bool, which: Option<String>) -> Result<(), String> {
    let only = endpoint(root, &which)?;
    let rows = margay_ctl::counters(root, only.as_ref()).map_err(err)?;
    emit_rows(
        json_out,
        &rows,
        &[
            "IFNAME",
            "IP",
            "FROM-POD PKTS/BYTES",
            "TO-POD PKTS/BYTES",
            "DROPS",
        ],
        |r| {
            let drops = r
                .drops
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            vec![
                r.ifname.clone(),
                r.ip.to_string(),
                format!("{}/{}", r.from_pod_packets, r.from_pod_bytes),
                format!("{}/{}", r.to_pod_packets, r.to_pod_bytes),
                if drops.is_empty() { "-".into() } else { drops },
            ]
        },
    );
    Ok(())
}

/// `margayctl conntrack dump|flush`.
fn conntrack(root: &Path, json_out: bool, action: CtAction) -> Result<(), String> {
    match action {
        CtAction::Dump { endpoint: which } => {
            let only = endpoint(root, &which)?;
            let records: Vec<CtRecord> =
                inspect::conntrack_records(root, only.map(|e| e.ifindex)).map_err(err)?;
            emit_rows(
                json_out,
                &records,
                &[
                    "IFINDEX",
                    "PROTO",
                    "SRC",
                    "DST",
                    "STATE",
                    "AGE",
                    "IDLE",
                    "PATH",
                    "REPLIES-AS",
                ],
                |r| {
                    vec![
                        r.ifindex.to_string(),
                        r.protocol.to_string(),
                        r.src.clone(),
                        r.dst.clone(),
                        r.state.to_string(),
                        format!("{}s", r.age_s),
                        format!("{}s", r.idle_s),
                        r.path.clone(),
                        r.replies_as.clone().unwrap_or_else(|| "-".into()),
                    ]
                },
            );
        }
        CtAction::Flush { endpoint: which } => {
            let only = endpoint(root, &which)?;
            let n = registry::flush_conntrack(root, only.map(|e| e.ifindex)).map_err(err)?;
            emit(format!("flushed {n} conntrack entries"));
        }
    }
    Ok(())
}

/// `margayctl policy set|show|sets`.
fn policy_cmd(root: &Path, json_out: bool, action: PolicyAction) -> Result<(), String> {
    match action {
        PolicyAction::Set {
            endpoint: which,
            file,
        } => {
            let ep = resolve(root, &which)?;
            let spec: PolicySpec = read_yaml(&file)?;
            policy::set(root, ep.ifindex, &spec).map_err(err)?;
            emit(format!(
                "policy of {} ({}): ingress {}, egress {}",
                ep.ifname(),
                ep.ipv4(),
                policy_summary(&spec.ingress),
                policy_summary(&spec.egress)
            ));
        }
        PolicyAction::Show { endpoint: which } => {
            let eps = match endpoint(root, &which)? {
                Some(e) => vec![e],
                None => registry::list(root).map_err(err)?,
            };
            let mut shown = Vec::new();
            for ep in eps {
                shown.push((
                    ep.ifname(),
                    ep.ipv4(),
                    policy::get(root, ep.ifindex).map_err(err)?,
                ));
            }
            emit(if json_out {
                let map: Vec<_> = shown
                    .iter()
                    .map(|(n, ip, p)| serde_json::json!({"ifname": n, "ip": ip, "policy": p}))
                    .collect();
                json(&map)
            } else {
                shown
                    .iter()
                    .map(|(n, ip, p)| {
                        format!(
                            "{n} ({ip}):\n{}",
                            serde_yaml_ng::to_string(p).unwrap_or_default().trim_end()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        PolicyAction::Sets { file } => {
            let set_err = |e: margay_ebpf::ip_set::IpSetError| e.to_string();
            let mut table = IpSetTable::open(root).map_err(err)?;
            let Some(file) = file else {
                let sets = table.sets();
                emit(if json_out {
                    json(&sets)
                } else {
                    serde_yaml_ng::to_string(&sets).unwrap_or_default()
                });
                return Ok(());
            };
            let sets: IpSets = read_yaml(&file)?;
            let report = table.apply(&sets).map_err(set_err)?;
            let mut named = std::collections::BTreeSet::new();
            for ep in registry::list(root).map_err(err)? {
                let spec = policy::get(root, ep.ifindex).map_err(err)?;
                for rule in [spec.ingress, spec.egress].into_iter().flatten().flatten() {
                    named.extend(rule.set);
                }
            }
            let retired = table
                .retire(&|name| sets.contains_key(name) || named.contains(name))
                .map_err(set_err)?;
            emit(format!(
                "sets: {} added, {} members added, {} removed; {retired} sets retired",
                report.sets_added, report.members_added, report.members_removed
            ));
        }
    }
    Ok(())
}

/// `margayctl drops`.
fn drops(root: &Path, json_out: bool, follow: bool) -> Result<(), String> {
    let timeout = if follow {
        None
    } else {
        Some(std::time::Duration::ZERO)
    };
    inspect::follow_events(root, timeout, |r| {
        let name = registry::list(root)
            .ok()
            .and_then(|l| l.into_iter().find(|ep| ep.ifindex == r.ifindex))
            .map(|ep| ep.ifname())
            .unwrap_or_else(|| format!("ifindex {}", r.ifindex));
        emit(if json_out {
            serde_json::to_string(&serde_json::json!({"endpoint": name, "event": r}))
                .expect("serializes")
        } else {
            let why = r.denied_by.as_ref().map(|d| format!(" ({d})"));
            format!(
                "{:<15} {:<9} {:<15} proto {:<3} {} -> {}{}",
                name,
                r.direction,
                r.verdict,
                r.protocol,
                r.src,
                r.dst,
                why.unwrap_or_default()
            )
        });
        true
    })
    .map_err(err)?;
    Ok(())
}

/// `margayctl service apply|list`.
fn service_cmd(root: &Path, json_out: bool, action: ServiceAction) -> Result<(), String> {
    match action {
        ServiceAction::Apply { file } => {
            let specs = read_yaml::<ServiceFile>(&file)?.services;
            let report = service::apply(root, &specs).map_err(|e| e.to_string())?;
            emit(if json_out {
                json(&report)
            } else {
                format!(
                    "services: {} added, {} updated, {} removed, {} unchanged",
                    report.added, report.updated, report.removed, report.unchanged
                )
            });
        }
        ServiceAction::List => {
            let rows = service::list(root).map_err(err)?;
            emit_rows(
                json_out,
                &rows,
                &["NAME", "KIND", "FRONTEND", "BACKENDS", "OPTIONS"],
                |r| {
                    vec![
                        r.name.clone(),
                        r.kind.to_string(),
                        format!("{}:{}/{}", r.address, r.port, r.protocol),
                        if r.backends.is_empty() {
                            "- (rejects)".into()
                        } else {
                            r.backends
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(",")
                        },
                        [
                            r.affinity_timeout.map(|t| format!("client-ip {t}s")),
                            r.local_only.then(|| "local-only".to_string()),
                        ]
                        .into_iter()
                        .flatten()
                        .reduce(|a, b| format!("{a},{b}"))
                        .unwrap_or_else(|| "-".into()),
                    ]
                },
            );
        }
    }
    Ok(())
}

/// `margayctl nat dump`.
fn nat(root: &Path, json_out: bool, action: NatAction) -> Result<(), String> {
    match action {
        NatAction::Dump => {
            let names = service::names(root).map_err(err)?;
            let now = inspect::monotonic_ns();
            let mut records: Vec<NatRecord> = inspect::nat(root)
                .map_err(err)?
                .iter()
                .map(|t| {
                    let name = names.get(&t.svc_id).cloned().unwrap_or_default();
                    NatRecord::new(t, name, now)
                })
                .collect();
            records
                .sort_by(|a, b| (a.direction, &a.src, &a.dst).cmp(&(b.direction, &b.src, &b.dst)));
            emit_rows(
                json_out,
                &records,
                &[
                    "DIRECTION",
                    "PROTO",
                    "SRC",
                    "DST",
                    "TRANSLATED",
                    "HAIRPIN",
                    "SERVICE",
                    "IDLE",
                ],
                |r| {
                    vec![
                        r.direction.to_string(),
                        r.protocol.to_string(),
                        r.src.clone(),
                        r.dst.clone(),
                        r.translated.clone(),
                        r.hairpin
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| "-".into()),
                        r.service.clone(),
                        r.idle_s
                            .map(|s| format!("{s}s"))
                            .unwrap_or_else(|| "-".into()),
                    ]
                },
            );
        }
    }
    Ok(())
}

/// `margayctl node attach|peers|detach|show`.
fn node(root: &Path, json_out: bool, action: NodeAction) -> Result<(), String> {
    match action {
        NodeAction::Attach {
            iface,
            external_mode,
        } => {
            let mut node = Node::open_pinned_as_is(root).map_err(err)?;
            let done = nodeport::attach_data_ifaces(
                &mut node,
                root,
                std::slice::from_ref(&iface),
                external_mode,
            )
            .map_err(|e| e.to_string())?;
            let addrs: Vec<String> = done
                .ifaces
                .iter()
                .flat_map(|(_, addrs)| addrs.iter().map(ToString::to_string))
                .collect();
            emit(format!(
                "from_net attached to {iface}; NodePorts answer on {} ({} frontends of applied \
             services opened); backends on other nodes through {} ({external_mode:?})",
                addrs.join(", "),
                done.node_ports.added,
                cluster::TUNNEL_DEVICE
            ));
        }
        NodeAction::Peers { file } => {
            let peers = read_yaml::<PeerFile>(&file)?.peers;
            let report = cluster::apply_peers(root, &peers).map_err(|e| e.to_string())?;
            emit(if json_out {
                json(&report)
            } else {
                format!(
                    "peers: {} pod CIDRs known, {} routes, {} CIDRs removed",
                    report.cidrs, report.routes, report.removed
                )
            });
        }
        NodeAction::Detach { iface } => {
            nodeport::detach(root, &iface).map_err(err)?;
            let closed = service::refresh_node_ports(root).map_err(|e| e.to_string())?;
            emit(format!(
                "from_net detached from {iface} ({} NodePort frontends closed)",
                closed.removed
            ));
        }
        NodeAction::Show => {
            let rows = nodeport::data_ifaces(root).map_err(err)?;
            let peers = cluster::peers(root).map_err(err)?;
            let tunnel = cluster::tunnel_settings(root).map_err(err)?;
            let external_mode = if tunnel.external_mode == EXT_MODE_DSR {
                "dsr"
            } else {
                "tunnel"
            };
            emit(if json_out {
                json(&serde_json::json!({
                    "data_ifaces": rows,
                    "tunnel_ifindex": tunnel.tunnel_ifindex,
                    "external_mode": external_mode,
                    "peers": peers.iter().map(|p| serde_json::json!({"pod_cidr": p.cidr, "node": p.node, "node6": p.node6, "encap": p.encap})).collect::<Vec<_>>(),
                }))
            } else {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|d| {
                        vec![
                            d.ifname.clone().unwrap_or_else(|| "(gone)".into()),
                            d.ifindex.to_string(),
                            d.address.to_string(),
                        ]
                    })
                    .collect();
                let peer_cells: Vec<Vec<String>> = peers
                    .iter()
                    .map(|p| {
                        vec![
                            p.cidr.to_string(),
                            p.node6
                                .map_or(p.node.to_string(), |a| format!("{} {a}", p.node)),
                            p.routed_via()
                                .map_or("tunnel".into(), |via| format!("route via {via}")),
                        ]
                    })
                    .collect();
                format!(
                    "{}\nexternal mode: {}, tunnel ifindex {}\n{}",
                    table(&["IFACE", "IFINDEX", "NODEPORT ADDRESS"], &cells),
                    external_mode,
                    tunnel.tunnel_ifindex,
                    table(&["PEER POD CIDR", "NODE", "REACHED BY"], &peer_cells)
                )
            });
        }
    }
    Ok(())
}

/// `margayctl dataplane detach-all`.
fn dataplane(root: &Path, action: DataplaneAction) -> Result<(), String> {
    match action {
        DataplaneAction::DetachAll => {
            let names = margay_ctl::detach_all(root).map_err(err)?;
            emit(format!(
                "detached {} endpoint(s): {}",
                names.len(),
                names.join(" ")
            ));
        }
    }
    Ok(())
}
