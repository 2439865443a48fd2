//! The CNI protocol layer shared by every Margay binary, and Margay's own
//! configuration schema.
//!
//! A plugin binary is a thin `main` over [`dispatch::run`]:
//!
//! ```no_run
//! use margay_conf::dispatch::{self, Plugin};
//! # struct MyPlugin;
//! # impl Plugin for MyPlugin {
//! #   fn add(&self, _: &dispatch::Invocation, _: &margay_conf::env::Attachment)
//! #       -> Result<margay_conf::result::CniResult, margay_conf::CniError> { unimplemented!() }
//! #   fn del(&self, _: &dispatch::Invocation, _: &margay_conf::env::Attachment)
//! #       -> Result<(), margay_conf::CniError> { Ok(()) }
//! #   fn check(&self, _: &dispatch::Invocation, _: &margay_conf::env::Attachment)
//! #       -> Result<(), margay_conf::CniError> { Ok(()) }
//! #   fn gc(&self, _: &dispatch::Invocation, _: &[margay_conf::netconf::AttachmentId])
//! #       -> Result<(), margay_conf::CniError> { Ok(()) }
//! #   fn status(&self, _: &dispatch::Invocation) -> Result<(), margay_conf::CniError> { Ok(()) }
//! # }
//! fn main() -> std::process::ExitCode {
//!     dispatch::run(&MyPlugin)
//! }
//! ```
//!
//! Modules:
//! - [`version`]: the spec versions Margay speaks and how they are negotiated;
//! - [`error`]: the CNI error reply and its codes;
//! - [`env`]: the `CNI_*` environment, validated per verb;
//! - [`netconf`]: network configuration and configuration lists;
//! - [`result`]: ADD results, written in the shape of the requested version;
//! - [`dispatch`]: reads one invocation, calls the plugin, writes its reply;
//! - [`exec`]: runs a delegated plugin (IPAM) the way a runtime would;
//! - [`margay`]: the `margay`/`margay-ipam` configuration keys and their validation;
//! - [`lock`]: node-wide exclusive file locks with a deadline;
//! - [`report`]: plain-text tables for the operator commands;
//! - [`logging`]: `tracing` to stderr or a log file, never stdout;
//! - [`entry`]: the lean process entry of the binaries a runtime execs;
//! - [`agent`]: what the node's binaries ask `margay-agent` on its socket.

pub mod agent;
pub mod dispatch;
pub mod entry;
pub mod env;
pub mod error;
pub mod exec;
pub mod lock;
pub mod logging;
pub mod margay;
pub mod netconf;
pub mod report;
pub mod result;
pub mod signals;
pub mod version;

pub use error::{CniError, Code};
pub use version::CniVersion;
