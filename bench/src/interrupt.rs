//! Ctrl-C and SIGTERM (`timeout`) end a run between two steps, so that
//! the guards of what it made (namespaces, pins, iptables chains, pods)
//! remove it on the way out: a signal's default action would leave it all
//! behind. A second signal ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use margay_conf::signals::TermSignals;

static STOP: AtomicBool = AtomicBool::new(false);

/// Takes SIGINT and SIGTERM over. Call first thing in `main`, before any
/// thread starts (see [`TermSignals::block`]): only the watcher waits for
/// them. (Children start with no signal blocked: Rust's `Command` resets
/// the mask.)
pub fn install() -> Result<()> {
    let signals = TermSignals::block().context("blocking SIGINT and SIGTERM")?;
    std::thread::spawn(move || {
        while let Ok(came) = signals.wait(Duration::from_secs(3600)) {
            if let Some(signal) = came
                && STOP.swap(true, Ordering::Relaxed)
            {
                std::process::exit(128 + signal);
            }
        }
    });
    Ok(())
}

/// An error once a stop was asked for: the step that checks ends the run.
pub fn check() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted: stopping and cleaning up (again to quit at once)");
    }
    Ok(())
}
