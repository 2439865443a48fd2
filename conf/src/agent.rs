//! What the node's binaries and `margay-agent` say to each other over the
//! agent's Unix socket (`ipam.agent_socket`), with `datastore: kubernetes`:
//! one JSON request and one JSON answer per connection, each a line.
//!
//! - `margay-ipam` asks for a block only when the node has no free address
//!   of a family left (the agent keeps headroom, so that is rare), and
//!   `margay-ipam blocks` asks what the API gives the node.
//! - `margay` asks, on every ADD of a Kubernetes pod, that the pod's
//!   NetworkPolicy be in force before its containers start.
//!
//! ```no_run
//! # use margay_conf::agent::{ask, Answer, Request};
//! # use std::time::Duration;
//! let answer = ask("/run/margay/agent.sock".as_ref(), &Request::Claim { family: 4 }, Duration::from_secs(10))?;
//! assert!(matches!(answer, Answer::Ready { .. }));
//! # Ok::<(), margay_conf::agent::Unreachable>(())
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// The longest line either side reads: a node's block list fits many times.
pub const MAX_LINE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "ask")]
pub enum Request {
    /// Make sure the node has a free IPv`family` address: claim a block in
    /// the API unless one has become free meanwhile.
    Claim { family: u8 },
    /// The blocks the API gives this node.
    Blocks,
    /// Put the NetworkPolicy of pod `namespace/name` (of `uid`, when the
    /// runtime says) in force on the endpoint registered at host veth
    /// `ifindex`.
    Policy {
        ifindex: u32,
        namespace: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "answer")]
pub enum Answer {
    /// The node has a free address of the family now: in `block`, claimed
    /// for this request, or in a block it held already (`None`).
    Ready { block: Option<IpNetwork> },
    /// Every block of the family's pools is held by some node.
    Exhausted { pools: String },
    /// The blocks the API gives this node, as the agent's watch last saw them.
    Blocks { blocks: Vec<ApiBlock> },
    /// The pod's policy is in force on its endpoint.
    PolicyApplied,
    /// The agent cannot do it now (the API unreachable, its caches not yet
    /// synced): worth retrying.
    Unavailable { reason: String },
}

/// One IPAMBlock object as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiBlock {
    /// The object's name.
    pub name: String,
    pub cidr: IpNetwork,
    /// The node `spec.node` names.
    pub node: String,
    /// Why the agent does not use the block, when it does not (it
    /// overlaps another object's, or lies outside every pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

/// The agent could not be asked, or its answer could not be read.
#[derive(Debug, thiserror::Error)]
#[error("margay-agent at {} cannot be reached: {reason}", socket.display())]
pub struct Unreachable {
    pub socket: PathBuf,
    pub reason: String,
    /// Whether a connection was made: false when no agent listens (it is
    /// not running), true when one took the request and failed to answer.
    pub connected: bool,
}

/// Sends `request` to the agent at `socket` and waits up to `timeout` for
/// its answer.
///
/// # Errors
/// [`Unreachable`] when the agent cannot be reached or answers something
/// unreadable.
pub fn ask(socket: &Path, request: &Request, timeout: Duration) -> Result<Answer, Unreachable> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Unreachable {
        socket: socket.to_owned(),
        reason: format!("{what}: {e}"),
        connected: true,
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| Unreachable {
        connected: false,
        ..fail("connecting", &e)
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| fail("setting a timeout", &e))?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| fail("sending the request", &e))?;
    let mut answer = String::new();
    BufReader::new(stream.take(MAX_LINE))
        .read_line(&mut answer)
        .map_err(|e| fail("reading the answer", &e))?;
    serde_json::from_str(&answer).map_err(|e| fail("reading the answer", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json_lines() {
        let request = serde_json::to_string(&Request::Claim { family: 6 }).unwrap();
        assert_eq!(request, r#"{"ask":"claim","family":6}"#);
        let answer: Answer =
            serde_json::from_str(r#"{"answer":"ready","block":"10.0.0.64/26"}"#).unwrap();
        assert_eq!(
            answer,
            Answer::Ready {
                block: Some("10.0.0.64/26".parse().unwrap())
            }
        );
        let request = Request::Policy {
            ifindex: 7,
            namespace: "ns".into(),
            name: "p".into(),
            uid: None,
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"ask":"policy","ifindex":7,"namespace":"ns","name":"p"}"#
        );
    }

    #[test]
    fn an_absent_agent_is_named_with_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let e = ask(&socket, &Request::Blocks, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains(&socket.display().to_string()), "{e}");
        assert!(!e.connected);
    }
}
