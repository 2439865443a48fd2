//! One plugin exec with an explicit environment, for tests that need to
//! send what a well-behaved runtime never would (missing variables, bad
//! JSON) and look at the raw reply.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

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
