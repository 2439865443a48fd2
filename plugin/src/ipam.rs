//! Delegation to the IPAM plugin named in `ipam.type`, exec'd from
//! `CNI_PATH` with our own configuration, as the spec prescribes.

use margay_conf::dispatch::Invocation;
use margay_conf::env::{Attachment, Command};
use margay_conf::exec::{PluginCall, Running};
use margay_conf::netconf::AttachmentId;
use margay_conf::result::CniResult;
use margay_conf::{CniError, Code};

/// One verb for `att` (ADD, DEL, CHECK) delegated and running; [`Call::finish`]
/// waits for it. Starting IPAM before anything else and finishing it last
/// lets the plugin's own work overlap it: IPAM is an ADD's critical path.
///
/// ```no_run
/// # use margay_conf::CniError;
/// # use margay_conf::dispatch::Invocation;
/// # use margay_conf::env::{Attachment, Command};
/// # use margay_plugin::ipam;
/// # fn f(inv: &Invocation, att: &Attachment) -> Result<(), CniError> {
/// let mut allocating = ipam::start(inv, att, Command::Add, "margay-ipam");
/// // ... create and ready the pair meanwhile ...
/// let early = allocating.early_add()?; // configure addresses from it
/// let confirmed = allocating.finish_add()?; // then confirm, always
/// # Ok(()) }
/// ```
pub struct Call<'a> {
    running: Result<Running, CniError>,
    command: Command,
    ipam: &'a str,
}

impl Call<'_> {
    fn finish_reply(self) -> Result<Option<CniResult>, CniError> {
        let ipam = self.ipam;
        let command = self.command;
        let reply = self
            .running
            .and_then(Running::finish)
            .map_err(|e| e.context(format!("IPAM {ipam} {}", command.as_str())))?;
        reply.map(|v| CniResult::from_value(&v)).transpose()
    }

    /// Waits for an ADD and returns its result, which must hold an address.
    ///
    /// # Errors
    ///
    /// [`Code::DelegateFailed`] when the plugin is not on `CNI_PATH`, cannot
    /// be run, fails without printing a CNI error, prints a reply that is
    /// not JSON, or returns no address; the plugin's own error, code
    /// included, when it prints one; [`Code::DecodeFailure`] when its reply
    /// is not a CNI result.
    pub fn finish_add(self) -> Result<CniResult, CniError> {
        let ipam = self.ipam;
        let result = self.finish_reply()?.unwrap_or_default();
        if result.ips.is_empty() {
            return Err(CniError::new(
                Code::DelegateFailed,
                format!("IPAM {ipam} ADD returned no address"),
            ));
        }
        Ok(result)
    }

    /// Waits for a DEL or CHECK, whose success prints nothing.
    ///
    /// # Errors
    ///
    /// [`Code::DelegateFailed`] when the plugin is not on `CNI_PATH`, cannot
    /// be run, fails without printing a CNI error, or prints a reply that is
    /// not JSON; the plugin's own error, code included, when it prints one;
    /// [`Code::DecodeFailure`] when it prints a reply that is not a CNI
    /// result.
    pub fn finish(self) -> Result<(), CniError> {
        self.finish_reply().map(drop)
    }

    /// The ADD's result as soon as IPAM has printed it, while its process
    /// may still be exiting; [`Call::finish_add`] must confirm it.
    ///
    /// # Errors
    ///
    /// As [`Call::finish_add`], except that a plugin that prints a result
    /// and then exits nonzero is caught by `finish_add` alone.
    pub fn early_add(&mut self) -> Result<CniResult, CniError> {
        let ipam = self.ipam;
        let command = self.command;
        let reply = match &mut self.running {
            Ok(running) => running.early_reply(),
            Err(e) => Err(e.clone()),
        }
        .map_err(|e| e.context(format!("IPAM {ipam} {}", command.as_str())))?;
        let result = reply
            .map(|v| CniResult::from_value(&v))
            .transpose()?
            .unwrap_or_default();
        if result.ips.is_empty() {
            return Err(CniError::new(
                Code::DelegateFailed,
                format!("IPAM {ipam} ADD returned no address"),
            ));
        }
        Ok(result)
    }
}

/// Starts IPAM for `att` and returns at once; a failure to start is
/// reported by whichever of [`Call::finish`], [`Call::finish_add`] or
/// [`Call::early_add`] is called, so every call path has one place to
/// handle it.
pub fn start<'a>(inv: &Invocation, att: &Attachment, command: Command, ipam: &'a str) -> Call<'a> {
    Call {
        running: PluginCall::attachment(command, att, &inv.cni_path).start(ipam, &inv.raw),
        command,
        ipam,
    }
}

/// Runs IPAM's DEL for `att`, releasing what it holds; also what a failed
/// ADD calls to give back its allocation.
///
/// # Errors
///
/// As [`Call::finish`].
pub fn del(inv: &Invocation, att: &Attachment, ipam: &str) -> Result<(), CniError> {
    start(inv, att, Command::Del, ipam).finish()
}

/// Runs IPAM's CHECK for `att`.
///
/// # Errors
///
/// As [`Call::finish`].
pub fn check(inv: &Invocation, att: &Attachment, ipam: &str) -> Result<(), CniError> {
    start(inv, att, Command::Check, ipam).finish()
}

/// Runs IPAM's GC or STATUS, which concern the whole network rather than
/// one attachment; they take the network's configuration as it came to us,
/// with GC's `valid` attachments added as `cni.dev/valid-attachments`.
///
/// # Errors
///
/// [`Code::DelegateFailed`] when the plugin is not on `CNI_PATH`, cannot be
/// run, fails without printing a CNI error, or prints a reply that is not
/// JSON; the plugin's own error, code included, when it prints one.
pub fn network_call(
    inv: &Invocation,
    command: Command,
    ipam: &str,
    valid: Option<&[AttachmentId]>,
) -> Result<(), CniError> {
    let mut conf = inv.raw.clone();
    if let Some(valid) = valid {
        let list = serde_json::to_value(valid).expect("attachments serialize");
        conf["cni.dev/valid-attachments"] = list;
    }
    PluginCall::network(command, &inv.cni_path)
        .run(ipam, &conf)
        .map(drop)
        .map_err(|e| e.context(format!("IPAM {ipam} {}", command.as_str())))
}
