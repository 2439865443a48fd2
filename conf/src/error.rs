//! The CNI error reply (`{cniVersion, code, msg, details}`) and its codes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A CNI error code: the spec's well-known codes, Margay's own (≥ 100), or a
/// code relayed unchanged from a delegated plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// 1: the configuration's `cniVersion` is not one we implement.
    IncompatibleVersion,
    /// 2: a field in the network configuration is not supported.
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: a `CNI_*` variable is missing or invalid.
    InvalidEnvironment,
    /// 5: an I/O failure.
    IoFailure,
    /// 6: stdin could not be decoded.
    DecodeFailure,
    /// 7: the network configuration is invalid.
    InvalidNetworkConfig,
    /// 11: a transient condition; the runtime should retry later.
    TryAgainLater,
    /// 50: STATUS: the plugin cannot serve ADD now.
    PluginNotAvailable,
    /// 51: STATUS: as 50, and existing containers may have limited connectivity.
    LimitedConnectivity,
    /// 100: the IPAM store is corrupt or unreadable.
    StoreCorrupt,
    /// 101: no pool has a free address.
    PoolExhausted,
    /// 102: a requested address is held by another attachment.
    AddressInUse,
    /// 103: a requested address lies outside every pool.
    AddressOutsidePools,
    /// 104: the kernel refused a network change (netlink, sysctl, netns).
    Kernel,
    /// 105: a delegated plugin could not be run or answered nonsense.
    DelegateFailed,
    /// 106: the eBPF dataplane could not be loaded, attached or updated.
    Dataplane,
    /// 107: what CHECK expected is not there.
    CheckFailed,
    /// 199: a bug in Margay (a panic was caught).
    Internal,
    /// Any other code, as relayed from a delegated plugin.
    Other(u32),
}

impl Code {
    const TABLE: [(Code, u32); 19] = [
        (Code::IncompatibleVersion, 1),
        (Code::UnsupportedField, 2),
        (Code::UnknownContainer, 3),
        (Code::InvalidEnvironment, 4),
        (Code::IoFailure, 5),
        (Code::DecodeFailure, 6),
        (Code::InvalidNetworkConfig, 7),
        (Code::TryAgainLater, 11),
        (Code::PluginNotAvailable, 50),
        (Code::LimitedConnectivity, 51),
        (Code::StoreCorrupt, 100),
        (Code::PoolExhausted, 101),
        (Code::AddressInUse, 102),
        (Code::AddressOutsidePools, 103),
        (Code::Kernel, 104),
        (Code::DelegateFailed, 105),
        (Code::Dataplane, 106),
        (Code::CheckFailed, 107),
        (Code::Internal, 199),
    ];

    pub fn number(self) -> u32 {
        match self {
            Code::Other(n) => n,
            known => Self::TABLE
                .iter()
                .find(|(c, _)| *c == known)
                .map(|(_, n)| *n)
                .expect("every named code is in TABLE"),
        }
    }

    pub fn from_number(n: u32) -> Code {
        Self::TABLE
            .iter()
            .find(|(_, num)| *num == n)
            .map(|(c, _)| *c)
            .unwrap_or(Code::Other(n))
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.number())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(Code::from_number)
    }
}

/// An error as a CNI plugin reports it. `msg` says what failed in one line;
/// `details` carries the underlying cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code.number())?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    /// Prefixes the message with what was being done, keeping code and details.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(Code::InvalidNetworkConfig, msg)
    }

    pub fn kernel(what: impl Into<String>, cause: impl fmt::Display) -> Self {
        Self::new(Code::Kernel, what).with_details(cause)
    }

    pub fn io(what: impl Into<String>, cause: impl fmt::Display) -> Self {
        Self::new(Code::IoFailure, what).with_details(cause)
    }

    /// The reply object written to stdout.
    pub fn to_reply(&self, version: &str) -> serde_json::Value {
        let mut reply = serde_json::json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            reply["details"] = self.details.clone().into();
        }
        reply
    }
}

/// The message a panic carried (`panic!("…")` payloads are `&str` or
/// `String`), for reporting a caught panic as an error.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_kept() {
        for (code, n) in Code::TABLE {
            assert_eq!(code.number(), n);
            assert_eq!(Code::from_number(n), code);
        }
        assert_eq!(Code::from_number(4242), Code::Other(4242));
        assert_eq!(Code::Other(4242).number(), 4242);
    }

    #[test]
    fn reply_has_spec_fields() {
        let e = CniError::new(Code::TryAgainLater, "store busy").with_details("lock held");
        let reply = e.to_reply("1.1.0");
        assert_eq!(reply["code"], 11);
        assert_eq!(reply["msg"], "store busy");
        assert_eq!(reply["details"], "lock held");
        assert_eq!(reply["cniVersion"], "1.1.0");
        let no_details = CniError::new(Code::IoFailure, "x").to_reply("1.0.0");
        assert!(no_details.get("details").is_none());
    }
}
