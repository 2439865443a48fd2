//! Delegation to the IPAM plugin named in `ipam.type`, exec'd from
//! `CNI_PATH` with our own configuration, as the spec prescribes.

use margay_conf::dispatch::Invocation;
use margay_conf::env::{Attachment, Command};
use margay_conf::exec::PluginCall;
use margay_conf::netconf::AttachmentId;
use margay_conf::result::CniResult;
use margay_conf::{CniError, Code};

/// Delegates one verb for `att` (ADD, DEL, CHECK); `Some` result for ADD.
fn call(
    inv: &Invocation,
    att: &Attachment,
    command: Command,
    ipam: &str,
) -> Result<Option<CniResult>, CniError> {
    let reply = PluginCall::attachment(command, att, &inv.cni_path)
        .run(ipam, &inv.raw)
        .map_err(|e| e.context(format!("IPAM {ipam} {}", command.as_str())))?;
    reply.map(|v| CniResult::from_value(&v)).transpose()
}

pub fn add(inv: &Invocation, att: &Attachment, ipam: &str) -> Result<CniResult, CniError> {
    let result = call(inv, att, Command::Add, ipam)?.unwrap_or_default();
    if result.ips.is_empty() {
        return Err(CniError::new(
            Code::DelegateFailed,
            format!("IPAM {ipam} ADD returned no address"),
        ));
    }
    Ok(result)
}

pub fn del(inv: &Invocation, att: &Attachment, ipam: &str) -> Result<(), CniError> {
    call(inv, att, Command::Del, ipam).map(drop)
}

pub fn check(inv: &Invocation, att: &Attachment, ipam: &str) -> Result<(), CniError> {
    call(inv, att, Command::Check, ipam).map(drop)
}

/// GC and STATUS take the network's whole configuration as it came to us.
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
