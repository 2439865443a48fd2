//! The entry point of the binaries a runtime execs (`margay`, `margay-ipam`),
//! used in place of Rust's own: they declare `#![no_main]` and call [`run`]
//! from a C `main`.
//!
//! Every CNI call is a new process and a pod's ADD runs two of them back to
//! back, so process start is latency. Rust's runtime start (`lang_start`)
//! among other things finds the main thread's stack guard by reading and
//! parsing `/proc/self/maps`: 0.12 ms of the 0.85 ms a small Rust program
//! takes to exec and exit here (`perf stat -r 400`, hello world with and
//! without it). [`run`] does what these binaries need of that start: ignore
//! SIGPIPE (a plugin that exits before reading its stdin must not kill us),
//! make sure fds 0-2 are open, turn a panic into an exit code, and flush
//! stdout. What is given up is the "stack overflow" message: an overflow
//! still kills the process, by SIGSEGV.

use std::ffi::c_int;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;

/// Runs `main` and returns the process's exit status: 0 for
/// [`ExitCode::SUCCESS`], 1 for any other code, 101 after a panic (as
/// Rust's own start does).
pub fn run(main: impl FnOnce() -> ExitCode) -> c_int {
    // SAFETY: changes a signal disposition; no handler code is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    open_std_fds();
    let code = panic::catch_unwind(AssertUnwindSafe(main));
    let _ = std::io::stdout().flush();
    match code {
        Ok(code) if code == ExitCode::SUCCESS => 0,
        Ok(_) => 1,
        Err(_) => 101,
    }
}

/// Opens /dev/null on whichever of fds 0-2 is closed, so that no file we
/// open later becomes our stdout by accident (what Rust's start does too).
fn open_std_fds() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of 3 pollfd; a zero timeout never blocks.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        return;
    }
    for pfd in fds {
        if pfd.revents & libc::POLLNVAL != 0 {
            // SAFETY: a constant, NUL-terminated path; the new descriptor
            // takes the lowest free number, the one that was closed, and
            // stays open for the life of the process on purpose.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}
