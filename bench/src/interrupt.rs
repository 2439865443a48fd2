//! Ctrl-C and SIGTERM (`timeout`) end a run between two steps, so that
//! the guards of what it made (namespaces, pins, iptables chains, pods)
//! remove it on the way out: a signal's default action would leave it all
//! behind. A second signal ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use nix::sys::signal::{SigSet, Signal};

static STOP: AtomicBool = AtomicBool::new(false);

/// Takes SIGINT and SIGTERM over. Call first thing in `main`, before any
/// thread starts: the signals are blocked in this thread, so in every
/// thread it starts, and only the watcher waits for them. (Children start
/// with no signal blocked: Rust's `Command` resets the mask.)
pub fn install() -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::spawn(move || {
        while let Ok(signal) = set.wait() {
            if STOP.swap(true, Ordering::Relaxed) {
                std::process::exit(128 + signal as i32);
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
