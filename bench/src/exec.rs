//! Executing a CNI plugin exactly as a container runtime does: `CNI_*`
//! variables in the environment, the network configuration on stdin, the
//! result (or error) JSON on stdout.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The `CNI_*` environment of one plugin invocation.
#[derive(Debug, Clone)]
pub struct CniEnv {
    /// `CNI_COMMAND`: `ADD`, `DEL`, `CHECK`, `GC`, `STATUS` or `VERSION`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_PATH`: where the plugin looks for plugins it delegates to.
    pub path: PathBuf,
    /// `CNI_ARGS`.
    pub args: String,
}

impl CniEnv {
    /// The variables, ready for [`run_plugin`].
    pub fn vars(&self) -> [(&'static str, &OsStr); 6] {
        [
            ("CNI_COMMAND", OsStr::new(&self.command)),
            ("CNI_CONTAINERID", OsStr::new(&self.container_id)),
            ("CNI_NETNS", OsStr::new(&self.netns)),
            ("CNI_IFNAME", OsStr::new(&self.ifname)),
            ("CNI_PATH", self.path.as_os_str()),
            ("CNI_ARGS", OsStr::new(&self.args)),
        ]
    }
}

/// What one plugin execution produced.
#[derive(Debug)]
pub struct PluginRun {
    /// Wall-clock time from just before spawning the process to its exit
    /// having been reaped (and its stdout/stderr drained).
    pub elapsed: Duration,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

impl PluginRun {
    /// Fails, quoting the plugin's stdout and stderr, unless it exited 0.
    pub fn check_success(&self, what: &str) -> Result<()> {
        if self.status.success() {
            return Ok(());
        }
        bail!(
            "{what} failed ({}): stdout: {} stderr: {}",
            self.status,
            String::from_utf8_lossy(&self.stdout).trim(),
            String::from_utf8_lossy(&self.stderr).trim()
        )
    }
}

/// Executes the plugin at `bin` with `env` added to this process's
/// environment (as libcni does: the runtime's environment plus the `CNI_*`
/// variables) and `stdin` written to its standard input, and waits for it.
///
/// `stdin` is written in full before stdout is read, as every CNI plugin reads
/// its whole configuration before answering; keep it under the pipe buffer
/// (64 KiB) for plugins that might not.
pub fn run_plugin<I, K, V>(bin: &Path, env: I, stdin: &[u8]) -> Result<PluginRun>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    crate::interrupt::check()?;
    let mut cmd = Command::new(bin);
    cmd.envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot execute {}", bin.display()))?;
    if let Some(mut pipe) = child.stdin.take() {
        match pipe.write_all(stdin) {
            // A plugin may exit (e.g. with an error) without reading stdin.
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e).context(format!("writing stdin of {}", bin.display()));
            }
            _ => {}
        }
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", bin.display()))?;
    let elapsed = start.elapsed();

    Ok(PluginRun {
        elapsed,
        stdout: output.stdout,
        stderr: output.stderr,
        status: output.status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_env_and_stdin_and_reports_status() {
        let sh = Path::new("/bin/sh");
        let env = CniEnv {
            command: "ADD".into(),
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            path: PathBuf::from("/opt/cni/bin"),
            args: String::new(),
        };
        // /bin/sh stands in for a plugin: it runs the script it reads on stdin.
        let run = run_plugin(
            sh,
            env.vars(),
            b"read line; echo \"$CNI_COMMAND $CNI_CONTAINERID $CNI_PATH [$CNI_ARGS] $line\"; exit 3\nhello\n",
        )
        .unwrap();
        assert_eq!(run.status.code(), Some(3));
        // What `read` gets depends on how the shell buffers its script, so
        // only the variables are asserted.
        let out = String::from_utf8(run.stdout).unwrap();
        assert!(out.starts_with("ADD c1 /opt/cni/bin []"), "{out}");
        assert!(run.elapsed > Duration::ZERO);
    }

    #[test]
    fn missing_binary_is_an_error() {
        let err = run_plugin(
            Path::new("/nonexistent/plugin"),
            [("CNI_COMMAND", "ADD")],
            b"{}",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/plugin"));
    }

    #[test]
    fn check_success_quotes_output() {
        let run = run_plugin(
            Path::new("/bin/sh"),
            [("X", "1")],
            b"echo '{\"code\":7}'; echo oops >&2; exit 1\n",
        )
        .unwrap();
        let err = run.check_success("ADD c1").unwrap_err().to_string();
        assert!(err.contains("ADD c1 failed"), "{err}");
        assert!(err.contains("{\"code\":7}"), "{err}");
        assert!(err.contains("oops"), "{err}");
    }
}
