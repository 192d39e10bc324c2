//! The hub's HTTPS API (axum): resources, images, tokens, cluster status and the
//! OpenAPI document. Every `/api/` route and `/metrics` need a bearer token (only the
//! `/healthz` liveness probe does not); bodies are size-limited; errors name the field at fault.

pub mod attach;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod ca;
pub mod cluster;
pub mod conn;
pub mod devices;
pub mod error;
pub mod images;
pub mod objects;
pub mod openapi;
pub mod query;
pub mod scope;
pub mod tokens;
pub mod watch;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest JSON body the API accepts.
pub const MAX_JSON_BODY: usize = 1 << 20;
/// A JSON request, body included, must be answered within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A TLS handshake, and each request's headers, must arrive within this; a
/// keep-alive connection idle this long is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::state::{HubConfig, HubState};

pub fn router(state: Arc<HubState>) -> Router {
    let image_limit = usize::try_from(state.config.max_image_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(crate::metrics::http::scrape))
        .route("/api/v1/openapi.json", get(openapi_document))
        .route("/api/v1/cluster", get(cluster::status))
        .route("/api/v1/cluster/join-tokens", post(cluster::create_join_token))
        .route("/api/v1/cluster/join", post(cluster::join))
        .route("/api/v1/cluster/members", post(cluster::add_member))
        .route("/api/v1/cluster/members/{id}", axum::routing::delete(cluster::remove_member))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/enrolment-tokens", post(tokens::create_enrolment).get(tokens::list_enrolment))
        .route("/api/v1/enrolment-tokens/{id}", axum::routing::delete(tokens::delete_enrolment))
        .route("/api/v1/api-tokens", post(tokens::create_api).get(tokens::list_api))
        .route("/api/v1/api-tokens/{id}", axum::routing::delete(tokens::delete_api))
        .route("/api/v1/devices/{name}/manifest", get(objects::get_manifest))
        .route("/api/v1/devices/{name}/decommission", post(devices::decommission))
        .route("/api/v1/devices/{name}/approve", post(devices::approve))
        .route("/api/v1/devices/{name}/reject", post(devices::reject))
        .route("/api/v1/devices/{name}/usage", get(devices::usage))
        .route("/api/v1/ca", get(ca::status))
        .route("/api/v1/ca/rotate", post(ca::rotate))
        .route("/api/v1/ca/activate", post(ca::activate))
        .route("/api/v1/ca/retire", post(ca::retire))
        .route("/api/v1/apps/{name}/placement", get(objects::get_placement))
        .route("/api/v1/apps/{name}/logs", get(attach::logs))
        .route("/api/v1/apps/{name}/exec", get(attach::exec))
        .route("/api/v1/{kind}", get(objects::list))
        .route("/api/v1/{kind}/{name}", get(objects::get).put(objects::apply).delete(objects::delete))
        .fallback(|| async { error::ApiError::NotFound("no such route; see /api/v1/openapi.json".into()) })
        // Every route above answers within REQUEST_TIMEOUT, body included; image
        // uploads (below) may take as long as the bytes keep coming.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // A large store takes longer than REQUEST_TIMEOUT to copy and send.
        .route("/api/v1/backup", get(backup::download))
        .route(
            "/api/v1/images",
            post(images::import).layer(DefaultBodyLimit::max(image_limit)).get(objects::list_images),
        )
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(axum::middleware::from_fn(error::json_errors))
        // Outermost: it counts the status the client gets, under the route matched.
        .layer(axum::middleware::from_fn_with_state(state.metrics.clone(), crate::metrics::http::track))
        .with_state(state)
}

async fn openapi_document(caller: auth::Caller) -> error::ApiResult<Json<Value>> {
    caller.require(shared_proto::store::Role::Viewer)?;
    Ok(Json(openapi::document()))
}

/// Serves `router` over TLS on `listener` until `shutdown` flips, within `limits`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: conn::Limits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = conn::Slots::new(limits);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let permit = match slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(full) => {
                // Closed at once: the client learns now, and the backlog stays empty.
                tracing::debug!(%peer, ?full, "api connection refused: no slot");
                drop(tcp);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        // Every request carries the address of the client that sent it (for the audit log).
        let service = TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(audit::ClientAddr(peer));
                    req
                })
                .service(router.clone()),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                // WebSockets (exec).
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "api connection ended with an error");
            }
        });
    }
}
