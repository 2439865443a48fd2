//! `margay-agent`: the DaemonSet's main container (see the library).

use std::process::ExitCode;

use clap::Parser;
use margay_agent::settings::Settings;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let settings = Settings::parse();
    if settings.print_crd {
        let crd = <margay_agent::crd::IpamBlock as kube::CustomResourceExt>::crd();
        #[allow(clippy::print_stdout)] // The binary's own output.
        {
            println!(
                "{}",
                serde_json::to_string_pretty(&crd).expect("the CRD serializes")
            );
        }
        return ExitCode::SUCCESS;
    }
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|e| {
        eprintln!(
            "margay-agent: log level {:?}: {e}; using info",
            settings.log_level
        );
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("margay-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(margay_agent::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", margay_ebpf::error::report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
