//! One plugin exec with an explicit environment, for tests that need to
//! send what a well-behaved runtime never would (missing variables, bad
//! JSON) and look at the raw reply.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What a plugin printed and how it exited.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout as JSON (panics with the raw text when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The CNI error code of a failed call.
    pub fn error_code(&self) -> u64 {
        assert!(
            !self.success,
            "expected a failure, got success: {}",
            self.stdout
        );
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in error reply: {}", self.stdout))
    }
}

/// Runs `exe` with exactly `env` as its `CNI_*` variables and `stdin`.
pub fn run(exe: &Path, env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(exe);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CNI_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    let _ = child.stdin.take().expect("piped").write_all(stdin);
    let out = child.wait_with_output().expect("wait for plugin");
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd` (stdin closed), killing it after `timeout` (noted in
/// stderr). Output goes to anonymous files, not pipes: a daemon it leaves
/// behind (conmon of `podman run -d`, a node's containerd) must not keep a
/// reader waiting.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut stdout = tempfile::tempfile().unwrap();
    let mut stderr = tempfile::tempfile().unwrap();
    cmd.stdin(Stdio::null())
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |f: &mut std::fs::File| {
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        let _ = f.read_to_string(&mut s);
        s
    };
    let (stdout, mut stderr) = (read(&mut stdout), read(&mut stderr));
    if status.is_none() {
        stderr.push_str(&format!("\n(killed after {timeout:?}: {cmd:?})"));
    }
    Output {
        success: status.is_some_and(|s| s.success()),
        stdout,
        stderr,
    }
}
