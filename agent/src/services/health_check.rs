//! The `healthCheckNodePort`s of `externalTrafficPolicy: Local` Services,
//! answered as kube-proxy answers them: 200 while the node has a local
//! endpoint of the Service, 503 when it has none, so an external load
//! balancer sends the Service's traffic only to nodes that can serve it
//! without a second hop (and the client's address is kept).

use std::collections::HashMap;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::translate::HealthCheck;

/// The ports served now, each with its current figures.
#[derive(Default)]
pub struct HealthChecks {
    served: HashMap<u16, (watch::Sender<HealthCheck>, JoinHandle<()>)>,
}

impl HealthChecks {
    /// Serves exactly `wanted`: new ports bound, gone ones closed, the
    /// others' figures updated in place. A port that cannot be bound is
    /// named in the log and tried again at the next call.
    pub async fn set(&mut self, wanted: &[HealthCheck]) {
        let ports: HashMap<u16, &HealthCheck> = wanted.iter().map(|c| (c.port, c)).collect();
        self.served.retain(|port, (_, task)| {
            let keep = ports.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, check) in ports {
            if let Some((figures, _)) = self.served.get(&port) {
                figures.send_if_modified(|now| {
                    let changed = now != check;
                    if changed {
                        *now = check.clone();
                    }
                    changed
                });
                continue;
            }
            match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
                Ok(listener) => {
                    let (figures, rx) = watch::channel(check.clone());
                    let app = Router::new().fallback(answer).with_state(rx);
                    let task = tokio::spawn(async move {
                        if let Err(e) = axum::serve(listener, app).await {
                            tracing::error!(port, "health check node port: {e}");
                        }
                    });
                    tracing::info!(
                        port,
                        service = %format!("{}/{}", check.namespace, check.name),
                        "answering the health check node port"
                    );
                    self.served.insert(port, (figures, task));
                }
                Err(e) => tracing::error!(
                    port,
                    service = %format!("{}/{}", check.namespace, check.name),
                    "cannot bind the health check node port: {e}"
                ),
            }
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for (_, task) in self.served.values() {
            task.abort();
        }
    }
}

async fn answer(State(figures): State<watch::Receiver<HealthCheck>>) -> impl IntoResponse {
    let check = figures.borrow().clone();
    let body = serde_json::json!({
        "service": {"namespace": check.namespace, "name": check.name},
        "localEndpoints": check.local_endpoints,
        "serviceProxyHealthy": true,
    });
    let status = if check.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("x-load-balancing-endpoint-weight"),
                HeaderValue::from(check.local_endpoints),
            ),
        ],
        format!("{body}\n"),
    )
}
