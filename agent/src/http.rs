//! `/livez`, `/readyz` and `/metrics` (Prometheus text), on the address
//! `health_addr` names: the node's own or loopback, port 9091 by default
//! (felix's), never every address of the node.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::health::Health;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// The dataplane's counters, read at each scrape (bpf mode).
    dataplane: Option<crate::dataplane_metrics::Source>,
}

/// Serves until the agent stops.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    dataplane: Option<crate::dataplane_metrics::Source>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Shared {
            health,
            metrics,
            dataplane,
        });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (health_addr)"))?;
    tracing::info!(%addr, "serving /livez, /readyz and /metrics");
    axum::serve(listener, app)
        .await
        .context("the health server")
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    match s.health.ready() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn metrics_text(State(s): State<Shared>) -> impl IntoResponse {
    let mut text = String::new();
    if let Err(e) =
        prometheus_client::encoding::text::encode_registry(&mut text, &s.metrics.registry)
    {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        )
            .into_response();
    }
    if let Some(source) = s.dataplane {
        match tokio::task::spawn_blocking(move || source.render()).await {
            Ok(Ok(more)) => text.push_str(&more),
            Ok(Err(e)) => tracing::warn!("dataplane metrics: {e}"),
            Err(e) => tracing::warn!("dataplane metrics: {e}"),
        }
    }
    text.push_str("# EOF\n");
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
