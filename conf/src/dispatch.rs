//! One invocation of a plugin binary, from environment and stdin to the
//! reply on stdout and the exit code.

use std::io::{Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

use crate::env::{Attachment, Command, Env};
use crate::error::{CniError, Code, panic_message};
use crate::logging;
use crate::margay::LogConfig;
use crate::netconf::{AttachmentId, NetConf};
use crate::result::CniResult;
use crate::version::CniVersion;

/// What a plugin is asked, beside the attachment: its configuration (typed
/// common fields and the raw document for plugin-specific keys), the
/// negotiated version, and where other plugins live.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: Command,
    pub conf: NetConf,
    pub raw: Value,
    pub version: CniVersion,
    pub cni_path: Vec<PathBuf>,
}

/// The verbs a plugin implements. VERSION is answered by the dispatcher.
pub trait Plugin {
    fn add(&self, inv: &Invocation, att: &Attachment) -> Result<CniResult, CniError>;
    fn del(&self, inv: &Invocation, att: &Attachment) -> Result<(), CniError>;
    fn check(&self, inv: &Invocation, att: &Attachment) -> Result<(), CniError>;
    fn gc(&self, inv: &Invocation, valid: &[AttachmentId]) -> Result<(), CniError>;
    fn status(&self, inv: &Invocation) -> Result<(), CniError>;
}

/// What the process prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Success with nothing on stdout (DEL, CHECK, GC, STATUS).
    Done,
    /// Success with a JSON document on stdout (ADD, VERSION).
    Document(Value),
    /// An error reply on stdout and a non-zero exit.
    Failed(Value),
}

impl Reply {
    fn error(e: &CniError, version: &str) -> Reply {
        tracing::error!(code = e.code.number(), details = %e.details, "{}", e.msg);
        Reply::Failed(e.to_reply(version))
    }
}

/// Runs `plugin` on the process's environment and stdin, writes the reply
/// and returns the exit code. Destructors run before exit (we never call
/// `process::exit`), so stores are flushed and locks released.
pub fn run(plugin: &impl Plugin) -> ExitCode {
    let mut stdin = Vec::new();
    let reply = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => handle(plugin, Env::from_process(), &stdin),
        Err(e) => Reply::error(
            &CniError::io("stdin could not be read", e),
            CniVersion::LATEST.as_str(),
        ),
    };
    let mut out = std::io::stdout().lock();
    let (doc, code) = match &reply {
        Reply::Done => (None, ExitCode::SUCCESS),
        Reply::Document(v) => (Some(v), ExitCode::SUCCESS),
        Reply::Failed(v) => (Some(v), ExitCode::FAILURE),
    };
    if let Some(v) = doc {
        let written = serde_json::to_writer(&mut out, v)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if written.is_err() {
            return ExitCode::FAILURE;
        }
    }
    drop(out);
    release_stdio();
    code
}

/// Lets go of the caller's pipes once the reply is out: a caller reading
/// them to their end can go on while this process exits (its teardown takes
/// a few tenths of a millisecond; Margay reads IPAM's reply so, see
/// `exec::Running::early_reply`). Nothing is written after the reply; a
/// late log line would go to /dev/null rather than to a reused descriptor.
fn release_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// The whole protocol, without touching the process's stdio: testable.
pub fn handle(plugin: &impl Plugin, env: Result<Env, CniError>, stdin: &[u8]) -> Reply {
    // The version an error reply is written in: the configuration's when we
    // implement it, else our latest.
    let peek: Option<Value> = serde_json::from_slice(stdin).ok();
    let reply_version = peek
        .as_ref()
        .and_then(|v| v.get("cniVersion"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<CniVersion>().ok())
        .unwrap_or(CniVersion::LATEST);
    let env = match env {
        Ok(env) => env,
        Err(e) => return Reply::error(&e, reply_version.as_str()),
    };
    if env.command == Command::Version {
        return version_reply(peek.as_ref());
    }
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| dispatch(plugin, env, stdin)));
    match outcome {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => Reply::error(&e, reply_version.as_str()),
        Err(panic) => {
            let what = panic_message(&*panic).unwrap_or_else(|| "unknown panic".into());
            Reply::error(
                &CniError::new(Code::Internal, "internal error in Margay (please report)")
                    .with_details(what),
                reply_version.as_str(),
            )
        }
    }
}

fn dispatch(plugin: &impl Plugin, env: Env, stdin: &[u8]) -> Result<Reply, CniError> {
    let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            Code::DecodeFailure,
            "network configuration on stdin is not valid JSON",
        )
        .with_details(e)
    })?;
    logging::init(&LogConfig::from_conf(&raw)?);
    let conf = NetConf::parse(&raw)?;
    let version = conf.version()?;
    if matches!(env.command, Command::Gc | Command::Status) && version < CniVersion::V1_1_0 {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "{} needs cniVersion 1.1.0 or later; the configuration says {version}",
                env.command.as_str()
            ),
        ));
    }
    let inv = Invocation {
        command: env.command,
        conf,
        raw,
        version,
        cni_path: env.cni_path,
    };
    let _span = tracing::info_span!(
        "cni",
        command = inv.command.as_str(),
        network = %inv.conf.name,
        container = env.attachment.as_ref().map(|a| a.container_id.as_str()).unwrap_or(""),
        ifname = env.attachment.as_ref().map(|a| a.ifname.as_str()).unwrap_or(""),
    )
    .entered();
    let att = env.attachment.as_ref();
    let attachment = || att.expect("the environment check guarantees an attachment");
    match inv.command {
        Command::Add => plugin
            .add(&inv, attachment())
            .map(|r| Reply::Document(r.render(version))),
        Command::Del => plugin.del(&inv, attachment()).map(|()| Reply::Done),
        Command::Check => {
            if inv.conf.prev_result.is_none() {
                return Err(CniError::invalid_config(
                    "CHECK needs prevResult: the runtime must pass the result of the ADD",
                ));
            }
            plugin.check(&inv, attachment()).map(|()| Reply::Done)
        }
        Command::Gc => {
            let valid = inv.conf.valid_attachments().ok_or_else(|| {
                CniError::invalid_config(
                    "GC needs cni.dev/valid-attachments; refusing to treat its absence as \
                     'nothing is valid'",
                )
            })?;
            plugin.gc(&inv, valid).map(|()| Reply::Done)
        }
        Command::Status => plugin.status(&inv).map(|()| Reply::Done),
        Command::Version => unreachable!("VERSION is answered before dispatch"),
    }
}

fn version_reply(stdin: Option<&Value>) -> Reply {
    let asked = stdin
        .and_then(|v| v.get("cniVersion"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<CniVersion>().ok())
        .unwrap_or(CniVersion::LATEST);
    Reply::Document(serde_json::json!({
        "cniVersion": asked.as_str(),
        "supportedVersions": CniVersion::SUPPORTED.map(CniVersion::as_str),
    }))
}
