//! Running another CNI plugin the way a runtime does: found on `CNI_PATH`,
//! `CNI_*` in its environment, configuration on stdin, reply on stdout.
//! Margay uses it to delegate to IPAM; the test driver uses it to be a runtime.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};

use serde_json::Value;

use crate::env::{Attachment, Command};
use crate::error::{CniError, Code};

/// The `CNI_*` environment of one plugin call.
#[derive(Debug, Clone)]
pub struct PluginCall<'a> {
    pub command: Command,
    pub container_id: Option<&'a str>,
    pub netns: Option<&'a Path>,
    pub ifname: Option<&'a str>,
    pub args: String,
    pub cni_path: &'a [PathBuf],
}

impl<'a> PluginCall<'a> {
    /// A call for one attachment (ADD, DEL, CHECK).
    pub fn attachment(command: Command, att: &'a Attachment, cni_path: &'a [PathBuf]) -> Self {
        PluginCall {
            command,
            container_id: Some(&att.container_id),
            netns: att.netns.as_deref(),
            ifname: Some(&att.ifname),
            args: att.args.to_env_string(),
            cni_path,
        }
    }

    /// A call about the whole network (GC, STATUS).
    pub fn network(command: Command, cni_path: &'a [PathBuf]) -> Self {
        PluginCall {
            command,
            container_id: None,
            netns: None,
            ifname: None,
            args: String::new(),
            cni_path,
        }
    }

    /// Runs plugin `plugin_type` with `conf` on stdin. `Ok(None)` is a
    /// success with nothing printed; an error the plugin printed is returned
    /// as is, code included.
    pub fn run(&self, plugin_type: &str, conf: &Value) -> Result<Option<Value>, CniError> {
        self.start(plugin_type, conf)?.finish()
    }

    /// Starts plugin `plugin_type` with `conf` on stdin and returns at once,
    /// so the caller can work while it runs; [`Running::finish`] collects
    /// its reply. Every started plugin must be finished.
    pub fn start(&self, plugin_type: &str, conf: &Value) -> Result<Running, CniError> {
        let exe = find_plugin(self.cni_path, plugin_type)?;
        let mut process = Process::new(&exe);
        // Our own CNI_* must not leak into the child's: it gets exactly this call's.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CNI_") {
                process.env_remove(k);
            }
        }
        process
            .env("CNI_COMMAND", self.command.as_str())
            .env(
                "CNI_PATH",
                std::env::join_paths(self.cni_path).unwrap_or_default(),
            )
            .env("CNI_ARGS", &self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in [
            ("CNI_CONTAINERID", self.container_id),
            ("CNI_IFNAME", self.ifname),
        ] {
            if let Some(v) = v {
                process.env(k, v);
            }
        }
        if let Some(ns) = self.netns {
            process.env("CNI_NETNS", ns);
        }
        let mut child = process.spawn().map_err(|e| {
            CniError::new(
                Code::DelegateFailed,
                format!("plugin {plugin_type} ({}) could not be run", exe.display()),
            )
            .with_details(e)
        })?;
        let stdin = serde_json::to_vec(conf).expect("a JSON value serializes");
        // A plugin may exit before reading stdin (bad env); its reply
        // matters, not the broken pipe. Plugins read all of stdin before
        // they answer, so this cannot wait on our reading their output.
        let _ = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(&stdin);
        Ok(Running {
            plugin_type: plugin_type.to_string(),
            exe,
            child,
            output: None,
        })
    }
}

/// A plugin [`PluginCall::start`] started.
#[derive(Debug)]
pub struct Running {
    plugin_type: String,
    exe: PathBuf,
    child: Child,
    /// stdout and stderr, once read to their end.
    output: Option<(Vec<u8>, Vec<u8>)>,
}

impl Running {
    /// Waits for the plugin and returns its reply, as [`PluginCall::run`].
    pub fn finish(mut self) -> Result<Option<Value>, CniError> {
        self.read_output()?;
        let status = self.child.wait().map_err(|e| self.failed(e))?;
        let (stdout, stderr) = self.output.take().unwrap_or_default();
        reply(&self.plugin_type, &stdout, &stderr, Some(status))
    }

    /// The reply the plugin printed, as soon as it has closed its output,
    /// which may be before it exits (Margay's plugins close it once the
    /// reply is written; the rest is process teardown): the caller can go
    /// on meanwhile. It is what [`Running::finish`] returns if the plugin
    /// exits 0; an error reply is final (a plugin that prints one fails).
    pub fn early_reply(&mut self) -> Result<Option<Value>, CniError> {
        self.read_output()?;
        let (stdout, stderr) = self.output.as_ref().expect("read above");
        reply(&self.plugin_type, stdout, stderr, None)
    }

    fn failed(&self, e: impl std::fmt::Display) -> CniError {
        CniError::new(
            Code::DelegateFailed,
            format!(
                "plugin {} ({}) could not be run",
                self.plugin_type,
                self.exe.display()
            ),
        )
        .with_details(e)
    }

    /// Reads stdout and stderr together to their end (one of them filling
    /// its pipe while we wait on the other would deadlock).
    fn read_output(&mut self) -> Result<(), CniError> {
        if self.output.is_some() {
            return Ok(());
        }
        let pipes = [
            self.child.stdout.take().map(std::os::fd::OwnedFd::from),
            self.child.stderr.take().map(std::os::fd::OwnedFd::from),
        ];
        let output = read_to_end_both(pipes).map_err(|e| self.failed(e))?;
        self.output = Some(output);
        Ok(())
    }
}

fn read_to_end_both(
    mut pipes: [Option<std::os::fd::OwnedFd>; 2],
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut bufs = [Vec::new(), Vec::new()];
    let mut chunk = [0u8; 8192];
    while pipes.iter().any(Option::is_some) {
        let open: Vec<usize> = (0..2).filter(|&i| pipes[i].is_some()).collect();
        let mut fds: Vec<PollFd> = open
            .iter()
            .map(|&i| {
                let fd = pipes[i].as_ref().expect("open").as_fd();
                PollFd::new(fd, PollFlags::POLLIN)
            })
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let ready: Vec<usize> = open
            .iter()
            .zip(&fds)
            .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(&i, _)| i)
            .collect();
        drop(fds);
        for i in ready {
            let fd = pipes[i].as_ref().expect("open");
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => pipes[i] = None,
                Ok(n) => bufs[i].extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let [out, err] = bufs;
    Ok((out, err))
}

/// What a plugin's output means: its result (`None`: it printed nothing),
/// or its error. `status` None: not known yet (see `early_reply`).
fn reply(
    plugin_type: &str,
    stdout: &[u8],
    stderr: &[u8],
    status: Option<std::process::ExitStatus>,
) -> Result<Option<Value>, CniError> {
    let stdout = String::from_utf8_lossy(stdout);
    let stderr = String::from_utf8_lossy(stderr);
    let printed_error = serde_json::from_str::<CniError>(&stdout).ok();
    let succeeded = match status {
        Some(status) => status.success(),
        None => printed_error.is_none(),
    };
    if succeeded {
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        return serde_json::from_str(&stdout).map(Some).map_err(|e| {
            CniError::new(
                Code::DelegateFailed,
                format!("plugin {plugin_type} printed a reply that is not JSON"),
            )
            .with_details(format!("{e}; stdout: {}", stdout.trim()))
        });
    }
    match printed_error {
        Some(err) => Err(err),
        None => Err(CniError::new(
            Code::DelegateFailed,
            format!(
                "plugin {plugin_type} failed ({}) without a CNI error reply",
                status.map(|s| s.to_string()).unwrap_or_default()
            ),
        )
        .with_details(format!(
            "stdout: {} stderr: {}",
            stdout.trim(),
            tail(&stderr)
        ))),
    }
}

fn tail(s: &str) -> &str {
    let s = s.trim();
    let cut = s.len().saturating_sub(2000);
    let start = (cut..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// The first executable named `plugin_type` in `cni_path`.
pub fn find_plugin(cni_path: &[PathBuf], plugin_type: &str) -> Result<PathBuf, CniError> {
    use std::os::unix::fs::PermissionsExt;
    cni_path
        .iter()
        .map(|dir| dir.join(plugin_type))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            CniError::new(
                Code::DelegateFailed,
                format!("plugin {plugin_type:?} was not found on CNI_PATH"),
            )
            .with_details(format!(
                "searched: {}",
                cni_path
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            ))
        })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A "plugin" directory holding `name`, a shell script.
    fn plugin(name: &str, script: &str) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\ncat >/dev/null\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn start(dir: &tempfile::TempDir, name: &str) -> Running {
        let path = [dir.path().to_path_buf()];
        PluginCall::network(Command::Status, &path)
            .start(name, &serde_json::json!({}))
            .unwrap()
    }

    #[test]
    fn early_reply_comes_when_the_output_closes_and_finish_confirms_it() {
        let dir = plugin(
            "p",
            "echo '{\"ips\":[]}'; exec >/dev/null 2>&1; sleep 0.5; exit 0",
        );
        let mut running = start(&dir, "p");
        let t = Instant::now();
        let early = running.early_reply().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(early, Some(serde_json::json!({"ips": []})));
        assert_eq!(running.finish().unwrap(), early);
    }

    #[test]
    fn a_failure_after_a_result_is_caught_by_finish() {
        let dir = plugin("p", "echo '{\"ips\":[]}'; exit 3");
        let mut running = start(&dir, "p");
        assert!(running.early_reply().is_ok());
        let err = running.finish().unwrap_err();
        assert!(err.msg.contains("without a CNI error reply"), "{err}");
    }

    #[test]
    fn an_error_reply_is_final_early_and_stderr_is_kept() {
        let dir = plugin(
            "p",
            "echo '{\"code\":11,\"msg\":\"busy\"}'; echo noise >&2; exit 1",
        );
        let mut running = start(&dir, "p");
        assert_eq!(running.early_reply().unwrap_err().msg, "busy");
        assert_eq!(running.finish().unwrap_err().code, Code::TryAgainLater);
        let dir = plugin("q", "echo garbage; echo why >&2; exit 2");
        let err = start(&dir, "q").finish().unwrap_err();
        assert!(err.details.contains("why"), "{err}");
    }
}
