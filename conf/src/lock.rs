//! Node-wide exclusive locks: a blocking `flock(2)` on a lock file, given up
//! after a deadline.
//!
//! ```no_run
//! # use std::time::Duration;
//! let guard = margay_conf::lock::FileLock::acquire("/var/lib/cni/margay/ipam.lock".as_ref(),
//!                                                  Duration::from_secs(10))?;
//! // ... the store is ours until `guard` drops ...
//! # Ok::<(), margay_conf::lock::LockError>(())
//! ```
//!
//! Why blocking rather than polling with `LOCK_NB`: waiters queue in the
//! kernel and are woken the moment the holder lets go, so 64 pods started
//! at once are served in about the time of 64 critical sections, without
//! sleep granularity added to each.
//!
//! The deadline is a per-thread POSIX timer (`SIGEV_THREAD_ID`) that sends
//! SIGALRM, installed without `SA_RESTART`, so `flock` returns `EINTR`. The
//! timer repeats every few milliseconds after the deadline, which closes the
//! race where the first signal arrives just before `flock` starts to block.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{
    self, SaFlags, SigAction, SigEvent, SigHandler, SigSet, SigevNotify, Signal,
};
use nix::sys::time::TimeSpec;
use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
use nix::time::ClockId;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock file {path} cannot be opened: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lock {path} is still held by another process after {waited:?}")]
    Timeout { path: PathBuf, waited: Duration },
    #[error("lock {path} cannot be taken: {source}")]
    Flock { path: PathBuf, source: Errno },
}

/// An exclusive lock, released when dropped (or when the process dies,
/// however it dies: the kernel drops flocks with the last descriptor).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

extern "C" fn interrupt_only(_: libc::c_int) {}

impl FileLock {
    /// Blocks until the lock at `path` is ours, or fails with
    /// [`LockError::Timeout`] after `timeout`. Creates the file (and its
    /// directory) when missing.
    pub fn acquire(path: &Path, timeout: Duration) -> Result<FileLock, LockError> {
        let open_err = |source| LockError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(open_err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(open_err)?;
        let flock_err = |source| LockError::Flock {
            path: path.to_owned(),
            source,
        };
        // Uncontended: no timer needed.
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => return Ok(FileLock { _file: file }),
            Err(Errno::EWOULDBLOCK) => {}
            Err(e) => return Err(flock_err(e)),
        }
        let start = Instant::now();
        // Disarmed when dropped, on every path out of the loop.
        let _timer = arm_deadline(timeout).map_err(flock_err)?;
        loop {
            match flock(&file, libc::LOCK_EX) {
                Ok(()) => return Ok(FileLock { _file: file }),
                Err(Errno::EINTR) if start.elapsed() < timeout => continue,
                Err(Errno::EINTR) => {
                    return Err(LockError::Timeout {
                        path: path.to_owned(),
                        waited: start.elapsed(),
                    });
                }
                Err(e) => return Err(flock_err(e)),
            }
        }
    }
}

fn flock(file: &File, op: libc::c_int) -> Result<(), Errno> {
    // SAFETY: flock on a descriptor we own; no memory is involved.
    Errno::result(unsafe { libc::flock(file.as_raw_fd(), op) }).map(drop)
}

/// A timer that interrupts this thread's blocking calls once `after` has
/// passed, and again every 5 ms until dropped.
fn arm_deadline(after: Duration) -> Result<Timer, Errno> {
    let action = SigAction::new(
        SigHandler::Handler(interrupt_only),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    unsafe { signal::sigaction(Signal::SIGALRM, &action) }?;
    let event = SigEvent::new(SigevNotify::SigevThreadId {
        signal: Signal::SIGALRM,
        thread_id: nix::unistd::gettid().as_raw(),
        si_value: 0,
    });
    let mut timer = Timer::new(ClockId::CLOCK_MONOTONIC, event)?;
    timer.set(
        Expiration::IntervalDelayed(
            TimeSpec::from_duration(after.max(Duration::from_nanos(1))),
            TimeSpec::from_duration(Duration::from_millis(5)),
        ),
        TimerSetTimeFlags::empty(),
    )?;
    Ok(timer)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn second_taker_waits_then_times_out_then_succeeds() {
        let dir = std::env::temp_dir().join(format!("margay-lock-{}", std::process::id()));
        let path = dir.join("sub/test.lock");
        let held = FileLock::acquire(&path, Duration::from_secs(1)).unwrap();

        // Another open file description of the same file contends like another process.
        let start = Instant::now();
        let err = FileLock::acquire(&path, Duration::from_millis(150)).unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err}");
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert!(start.elapsed() < Duration::from_secs(2));

        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            let got = FileLock::acquire(&p, Duration::from_secs(5));
            tx.send(Instant::now()).unwrap();
            got.map(drop)
        });
        std::thread::sleep(Duration::from_millis(100));
        let released = Instant::now();
        drop(held);
        let acquired = rx.recv().unwrap();
        waiter.join().unwrap().unwrap();
        assert!(acquired >= released);
        assert!(
            acquired - released < Duration::from_millis(500),
            "woken promptly"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
