//! The agent's Unix socket (`ipam.agent_socket`), where margay-ipam asks for
//! a block when the node is out of addresses, `margay-ipam blocks` asks
//! what the API gives the node, and margay's ADD asks that a new pod's
//! NetworkPolicy be in force (the protocol: [`margay_conf::agent`]).
//!
//! The socket is made anew at start (a crashed agent leaves its file) and
//! is only root's: whoever can write to it can make the node claim blocks.

use margay_ebpf::error::report;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use margay_conf::agent::{Answer, MAX_LINE, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::ipam::{ClaimRequest, ClusterBlocks};
use crate::policy::EndpointRequest;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a claim may take before the client is told to retry.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(8);
/// How long putting a pod's policy in force may take before the ADD is
/// told to retry.
const POLICY_TIMEOUT: Duration = Duration::from_secs(8);

/// The parts of the agent that answer the socket's requests.
#[derive(Clone)]
pub struct Handlers {
    pub claims: mpsc::Sender<ClaimRequest>,
    pub blocks: watch::Receiver<Arc<ClusterBlocks>>,
    /// None when the node enforces no NetworkPolicy (the linux dataplane).
    pub policy: Option<mpsc::Sender<EndpointRequest>>,
}

/// Listens on `path` and answers until the agent stops.
///
/// # Errors
/// The socket cannot be made.
pub async fn serve(path: &Path, handlers: Handlers) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the old {}", path.display()));
        }
        _ => {}
    }
    let listener = UnixListener::bind(path).with_context(|| format!("{}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("{}", path.display()))?;
    tracing::info!(socket = %path.display(), "serving margay-ipam");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accepting on the agent socket: {e}");
                continue;
            }
        };
        let handlers = handlers.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, handlers).await {
                tracing::debug!("agent socket: {}", report(e.as_ref()));
            }
        });
    }
}

async fn answer(stream: UnixStream, handlers: Handlers) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        READ_TIMEOUT,
        BufReader::new(read.take(MAX_LINE)).read_line(&mut line),
    )
    .await
    .context("reading the request timed out")??;
    let answer = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Claim { family }) => claim(&handlers.claims, family).await,
        Ok(Request::Policy {
            ifindex,
            namespace,
            name,
            uid,
        }) => match &handlers.policy {
            Some(policy) => {
                let late = format!(
                    "the policy of pod {namespace}/{name} was not put in force within {POLICY_TIMEOUT:?}"
                );
                handed(
                    policy,
                    |reply| EndpointRequest {
                        ifindex,
                        namespace,
                        name,
                        uid,
                        reply,
                    },
                    POLICY_TIMEOUT,
                    "NetworkPolicy",
                    late,
                )
                .await
            }
            None => Answer::Unavailable {
                reason: "margay-agent enforces no NetworkPolicy on this node (dataplane linux)"
                    .into(),
            },
        },
        Ok(Request::Blocks) => {
            let view = handlers.blocks.borrow().clone();
            if view.synced {
                Answer::Blocks {
                    blocks: view.views.iter().filter_map(|v| v.to_api_block()).collect(),
                }
            } else {
                Answer::Unavailable {
                    reason: "margay-agent has not listed the IPAMBlocks yet".into(),
                }
            }
        }
        Err(e) => Answer::Unavailable {
            reason: format!("the request is not one margay-agent knows: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&answer).expect("answers serialize");
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

async fn claim(claims: &mpsc::Sender<ClaimRequest>, family: u8) -> Answer {
    if family != 4 && family != 6 {
        return Answer::Unavailable {
            reason: format!("family {family} is neither 4 nor 6"),
        };
    }
    let late = format!(
        "no block was claimed within {CLAIM_TIMEOUT:?} (is the Kubernetes API slow or away?)"
    );
    handed(
        claims,
        |reply| ClaimRequest { family, reply },
        CLAIM_TIMEOUT,
        "IPAM",
        late,
    )
    .await
}

/// Hands a request (made by `request` around its reply channel) to the
/// `part` of the agent behind `to`, and waits up to `timeout` for its
/// answer; `late` says what did not happen in time.
async fn handed<R>(
    to: &mpsc::Sender<R>,
    request: impl FnOnce(oneshot::Sender<Answer>) -> R,
    timeout: Duration,
    part: &str,
    late: String,
) -> Answer {
    let (reply, answer) = oneshot::channel();
    if to.send(request(reply)).await.is_err() {
        return Answer::Unavailable {
            reason: format!("margay-agent's {part} controller is not running"),
        };
    }
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(a)) => a,
        Ok(Err(_)) => Answer::Unavailable {
            reason: format!("margay-agent's {part} controller stopped"),
        },
        Err(_) => Answer::Unavailable { reason: late },
    }
}
