//! `margay-ipam`: a CNI IPAM plugin when `CNI_COMMAND` is set, an inspection
//! tool otherwise.
#![no_main]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use margay_conf::agent::{self, Answer, Request};
use margay_conf::margay::{Datastore, IpamConf};
use margay_conf::report::table;
use margay_ipam::IpamPlugin;
use margay_ipam::allocator::Allocator;
use margay_ipam::inspect::{self, allocation_rows};
use margay_ipam::store::Store;

#[derive(Parser)]
#[command(
    version,
    about = "Margay IPAM: a CNI plugin when CNI_COMMAND is set, else these commands"
)]
struct Cli {
    /// Network configuration or conflist to read `ipam` settings from.
    #[arg(
        long,
        global = true,
        env = "MARGAY_CONF",
        default_value = "/etc/cni/net.d/10-margay.conflist"
    )]
    conf: PathBuf,
    /// Store directory; overrides the configuration's `ipam.data_dir`.
    #[arg(long, global = true, env = "MARGAY_IPAM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Configured pools with their use on this node (needs --conf).
    Pools,
    /// Blocks claimed in the store; with `datastore: kubernetes`, also
    /// what the Kubernetes API says of each (asked of margay-agent).
    Blocks,
    /// Addresses held, by handle.
    Allocations,
    /// Releases what one handle holds (`<network>.<containerID>.<ifname>`).
    Release { handle: String },
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Entered without Rust's runtime start, which costs every call time
/// (see `margay_conf::entry`).
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    margay_conf::entry::run(plugin_or_tool)
}

fn plugin_or_tool() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return margay_conf::dispatch::run(&IpamPlugin);
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("margay-ipam: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let conf = inspect::conf_from_file(&cli.conf);
    let data_dir = match (&cli.data_dir, &conf) {
        (Some(d), _) => d.clone(),
        (None, Ok(c)) => c.data_dir.clone(),
        (None, Err(e)) => return Err(format!("{e} (or pass --data-dir)")),
    };
    let store = Store::open_existing(&data_dir, TIMEOUT).map_err(|e| e.to_string())?;
    let out = match cli.command {
        Cmd::Pools => {
            let conf = conf?;
            let pools = inspect::pools(store.as_ref(), &conf).map_err(|e| e.to_string())?;
            if cli.json {
                json(&pools)
            } else {
                let rows: Vec<Vec<String>> = pools
                    .iter()
                    .map(|p| {
                        vec![
                            p.pool.to_string(),
                            format!("/{}", p.block_prefix),
                            p.blocks_claimed.to_string(),
                            p.addresses_used.to_string(),
                            p.addresses_free_in_claimed_blocks.to_string(),
                            if p.can_allocate { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "POOL",
                        "BLOCK",
                        "BLOCKS",
                        "USED",
                        "FREE-IN-BLOCKS",
                        "CAN-ALLOCATE",
                    ],
                    &rows,
                )
            }
        }
        Cmd::Blocks => {
            let mut blocks = match &store {
                Some(s) => inspect::blocks(s).map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            let from_api = matches!(&conf, Ok(c) if c.datastore == Datastore::Kubernetes);
            if let Ok(c) = &conf
                && from_api
            {
                drop(store); // The agent may need the store to answer.
                let api = match agent::ask(&c.agent_socket, &Request::Blocks, TIMEOUT) {
                    Ok(Answer::Blocks { blocks }) => Ok(blocks),
                    Ok(other) => Err(format!("margay-agent answered {other:?}")),
                    Err(e) => Err(e.to_string()),
                };
                blocks = inspect::with_api(blocks, api, &c.nodename);
            }
            if cli.json {
                json(&blocks)
            } else {
                let rows: Vec<Vec<String>> = blocks
                    .iter()
                    .map(|b| {
                        let mut row = vec![
                            b.cidr.to_string(),
                            b.node.clone(),
                            format!("{}/{}", b.used, b.capacity),
                            b.fenced.clone().unwrap_or_else(|| "-".into()),
                        ];
                        row.extend(b.api.clone());
                        row
                    })
                    .collect();
                let headers: &[&str] = if from_api {
                    &["BLOCK", "NODE", "USED", "FENCED", "KUBERNETES API"]
                } else {
                    &["BLOCK", "NODE", "USED", "FENCED"]
                };
                table(headers, &rows)
            }
        }
        Cmd::Allocations => {
            let records = match &store {
                Some(s) => s.handles().map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            if cli.json {
                json(&records)
            } else {
                table(
                    &["ADDRESSES", "HANDLE", "POD", "NODE", "CREATED"],
                    &allocation_rows(&records),
                )
            }
        }
        Cmd::Release { handle } => {
            let store = store.ok_or_else(|| {
                format!("{handle}: nothing is allocated in {}", data_dir.display())
            })?;
            // Releasing needs no pools: the record names the addresses.
            let conf = conf.unwrap_or_else(|_| IpamConf::store_only(data_dir.clone()));
            let mut alloc = Allocator::new(&store, &conf);
            let released = alloc.release(&handle).map_err(|e| e.to_string())?;
            store
                .commit(alloc.into_changes())
                .map_err(|e| e.to_string())?;
            match released {
                Some(r) => format!(
                    "released {}: {}",
                    handle,
                    r.addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => return Err(format!("{handle}: no such handle")),
            }
        }
    };
    #[allow(clippy::print_stdout)] // The binary's own output.
    {
        println!("{out}");
    }
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("reports serialize")
}
