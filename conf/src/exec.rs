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
        })
    }
}

/// A plugin [`PluginCall::start`] started.
#[derive(Debug)]
pub struct Running {
    plugin_type: String,
    exe: PathBuf,
    child: Child,
}

impl Running {
    /// Waits for the plugin and returns its reply, as [`PluginCall::run`].
    pub fn finish(self) -> Result<Option<Value>, CniError> {
        let Running {
            plugin_type,
            exe,
            child,
        } = self;
        let out = child.wait_with_output().map_err(|e| {
            CniError::new(
                Code::DelegateFailed,
                format!("plugin {plugin_type} ({}) could not be run", exe.display()),
            )
            .with_details(e)
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
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
        match serde_json::from_str::<CniError>(&stdout) {
            Ok(err) => Err(err),
            Err(_) => Err(CniError::new(
                Code::DelegateFailed,
                format!(
                    "plugin {plugin_type} failed ({}) without a CNI error reply",
                    out.status
                ),
            )
            .with_details(format!(
                "stdout: {} stderr: {}",
                stdout.trim(),
                tail(&stderr)
            ))),
        }
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
