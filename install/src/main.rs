//! `margay-install`: the install-cni init container's command. Every flag
//! can be given as an environment variable, as init containers are
//! configured by env.

use margay_ebpf::error::report;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ipnetwork::IpNetwork;
use margay_install::template::Values;
use margay_install::{Options, Template};

#[derive(Parser)]
#[command(version, about = "Install Margay's binaries and conflist on this node")]
struct Cli {
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// File name of the conflist in the conf dir.
    #[arg(long, env = "CNI_CONF_NAME", default_value = "10-margay.conflist")]
    conf_name: String,
    /// A conflist template file (placeholders __NODENAME__, __CNI_MTU__,
    /// __POOLS__, __DATAPLANE__, __LOG_LEVEL__, __BPF_ROOT__, __IPAM_DATA_DIR__).
    #[arg(
        long,
        env = "CNI_NETWORK_CONFIG_FILE",
        conflicts_with = "network_config"
    )]
    template: Option<PathBuf>,
    /// The template itself, as text.
    #[arg(long, env = "CNI_NETWORK_CONFIG", hide_env_values = true)]
    network_config: Option<String>,
    /// Where the binaries to install are [default: this executable's directory].
    #[arg(long, env = "MARGAY_SOURCE_DIR")]
    source_dir: Option<PathBuf>,
    /// Binaries not to install (comma-separated).
    #[arg(long, env = "SKIP_CNI_BINARIES", value_delimiter = ',')]
    skip_binaries: Vec<String>,
    /// Older conf files in the conf dir to remove (comma-separated names).
    #[arg(long, env = "MARGAY_REMOVE_CONFS", value_delimiter = ',')]
    remove_confs: Vec<String>,
    /// This node's name [default: the hostname].
    #[arg(long, env = "NODENAME")]
    nodename: Option<String>,
    #[arg(long, env = "CNI_MTU", default_value_t = 1500)]
    mtu: u32,
    /// IPAM pools (comma-separated CIDRs).
    #[arg(
        long,
        env = "MARGAY_POOLS",
        value_delimiter = ',',
        default_value = "10.244.0.0/16"
    )]
    pools: Vec<IpNetwork>,
    #[arg(long, env = "MARGAY_DATAPLANE", default_value = "bpf")]
    dataplane: String,
    #[arg(long, env = "MARGAY_LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[arg(long, env = "MARGAY_BPF_ROOT", default_value = "/sys/fs/bpf/margay")]
    bpf_root: String,
    #[arg(
        long,
        env = "MARGAY_IPAM_DATA_DIR",
        default_value = "/var/lib/cni/margay"
    )]
    ipam_data_dir: String,
    /// Stay running: re-install when the template changes or an installed
    /// file disappears; exit cleanly on SIGTERM.
    #[arg(long, env = "MARGAY_WATCH")]
    watch: bool,
    /// Seconds between checks in --watch.
    #[arg(long, env = "MARGAY_WATCH_INTERVAL", default_value_t = 2)]
    watch_interval: u64,
    /// Remove the conflist, the binaries and the node's eBPF state.
    #[arg(long, env = "MARGAY_UNINSTALL", conflicts_with = "watch")]
    uninstall: bool,
    /// Say what would be done; change nothing.
    #[arg(long, env = "MARGAY_DRY_RUN")]
    dry_run: bool,
}

#[allow(clippy::print_stdout)] // The binary's own output.
fn say(lines: &[String]) {
    for l in lines {
        println!("margay-install: {l}");
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("margay-install: {}", report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let source_dir = match cli.source_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("the executable has a directory")?
            .to_path_buf(),
    };
    let nodename = match cli.nodename {
        Some(n) => n,
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    let template = match (cli.template, cli.network_config) {
        (Some(file), _) => Template::File(file),
        (None, Some(text)) => Template::Text(text),
        (None, None) => Template::Builtin,
    };
    let opts = Options {
        cni_bin_dir: cli.cni_bin_dir,
        cni_conf_dir: cli.cni_conf_dir,
        conf_name: cli.conf_name,
        template,
        source_dir,
        skip_binaries: cli.skip_binaries,
        remove_confs: cli.remove_confs,
        values: Values {
            nodename,
            mtu: cli.mtu,
            pools: cli.pools,
            dataplane: cli.dataplane,
            log_level: cli.log_level,
            bpf_root: cli.bpf_root,
            ipam_data_dir: cli.ipam_data_dir,
        },
        dry_run: cli.dry_run,
    };
    if cli.uninstall {
        say(&margay_install::uninstall(&opts)?);
        return Ok(());
    }
    if cli.watch {
        let interval = Duration::from_secs(cli.watch_interval.max(1));
        margay_install::watch(&opts, interval, |round| match round {
            Ok(lines) => say(&lines),
            // A bad template while watching keeps the installed conflist
            // and the container running; the next change is tried again.
            Err(e) => eprintln!("margay-install: {}", report(e.as_ref())),
        })?;
        say(&["SIGTERM: stopping".to_string()]);
        return Ok(());
    }
    say(&margay_install::install(&opts)?);
    Ok(())
}
