//! SIGTERM and SIGINT taken synchronously: blocked, then waited for, by
//! the long-running tools (`margay-install --watch`, `bench`) that must
//! stop cleanly on them rather than die with their work half done.

use std::time::Duration;

/// SIGTERM and SIGINT, blocked in the calling thread and so in every
/// thread it starts afterwards: they arrive only through [`Self::wait`].
/// Call [`Self::block`] before starting threads.
pub struct TermSignals(libc::sigset_t);

impl TermSignals {
    pub fn block() -> std::io::Result<TermSignals> {
        // SAFETY: sigset_t is plain data; the libc calls fill and apply it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(TermSignals(set))
        }
    }

    /// Waits up to `timeout`; the signal's number when one came.
    pub fn wait(&self, timeout: Duration) -> std::io::Result<Option<i32>> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: a valid set and timespec; no siginfo wanted.
        let rc = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &ts) };
        if rc > 0 {
            return Ok(Some(rc));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(err),
        }
    }
}
