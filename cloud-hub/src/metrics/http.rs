//! Serving and counting over HTTP: the middleware that counts every API request by its
//! route template, `GET /metrics` on the API port (a viewer token for every site: the
//! figures are fleet-wide), and the optional plain-HTTP listener on loopback
//! (`--metrics-listen`), which asks nothing of its caller and therefore refuses any
//! address but a loopback one.

use super::HubMetrics;
use crate::api::auth::Caller;
use crate::api::error::ApiResult;
use crate::state::HubState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared_proto::store::Role;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What Prometheus is told it receives.
pub const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counts a request once its response head is ready, under the route it matched.
pub async fn track(State(metrics): State<Arc<HubMetrics>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics.api_request(&method, route.as_deref(), response.status().as_u16(), started.elapsed());
    response
}

fn exposition(state: &HubState) -> Response {
    let text = state.metrics.render(&state.store.raft_progress());
    ([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], text).into_response()
}

/// `GET /metrics` on the API port.
pub async fn scrape(State(state): State<Arc<HubState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    caller.require_unscoped("metrics")?;
    Ok(exposition(&state))
}

/// Binds `--metrics-listen`: loopback only, since it serves without a token.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() {
        anyhow::bail!(
            "--metrics-listen {addr}: the plain metrics listener has no authentication and binds loopback addresses only (127.0.0.1, ::1); scrape other hosts through the API port with a viewer token (GET /metrics)"
        );
    }
    Ok(tokio::net::TcpListener::bind(addr).await?)
}

/// Serves `GET /metrics` over plain HTTP until `shutdown` flips.
pub async fn serve_plain(
    listener: tokio::net::TcpListener,
    state: Arc<HubState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(state): State<Arc<HubState>>| async move { exposition(&state) }),
        )
        .with_state(state);
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}
