//! The agent's Unix socket (`ipam.agent_socket`), where margay-ipam asks for
//! a block when the node is out of addresses and `margay-ipam blocks` asks
//! what the API gives the node (the protocol: [`margay_ipam::agent`]).
//!
//! The socket is made anew at start (a crashed agent leaves its file) and
//! is only root's: whoever can write to it can make the node claim blocks.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use margay_ipam::agent::{Answer, MAX_LINE, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::ipam::{ClaimRequest, ClusterBlocks};

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a claim may take before the client is told to retry.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(8);

/// Listens on `path` and answers until the agent stops.
///
/// # Errors
/// The socket cannot be made.
pub async fn serve(
    path: &Path,
    claims: mpsc::Sender<ClaimRequest>,
    blocks: watch::Receiver<Arc<ClusterBlocks>>,
) -> anyhow::Result<()> {
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
        let claims = claims.clone();
        let blocks = blocks.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, claims, blocks).await {
                tracing::debug!("agent socket: {e:#}");
            }
        });
    }
}

async fn answer(
    stream: UnixStream,
    claims: mpsc::Sender<ClaimRequest>,
    blocks: watch::Receiver<Arc<ClusterBlocks>>,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        READ_TIMEOUT,
        BufReader::new(read.take(MAX_LINE)).read_line(&mut line),
    )
    .await
    .context("reading the request timed out")??;
    let answer = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Claim { family }) => claim(&claims, family).await,
        Ok(Request::Blocks) => {
            let view = blocks.borrow().clone();
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
    let (reply, answer) = oneshot::channel();
    if claims.send(ClaimRequest { family, reply }).await.is_err() {
        return Answer::Unavailable {
            reason: "margay-agent's IPAM controller is not running".into(),
        };
    }
    match tokio::time::timeout(CLAIM_TIMEOUT, answer).await {
        Ok(Ok(a)) => a,
        Ok(Err(_)) => Answer::Unavailable {
            reason: "margay-agent's IPAM controller stopped".into(),
        },
        Err(_) => Answer::Unavailable {
            reason: format!(
                "no block was claimed within {CLAIM_TIMEOUT:?} (is the Kubernetes API slow or away?)"
            ),
        },
    }
}
