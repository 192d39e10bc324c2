//! `GET /api/v1/backup`: a backup file of the whole store, for `flotilla backup create`
//! (admins with a fleet-wide token). The file is `hub_store`'s backup format: every object
//! with its revisions at one applied revision, gzip-compressed behind a checksummed header.
//! It holds the fleet CA's private key and API token hashes, but Secrets only as
//! ciphertext: `secrets.key` is not in it. The call is audited like a mutating one.

use super::HubState;
use super::auth::Caller;
use super::error::ApiResult;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use shared_proto::store::Role;
use std::sync::Arc;

/// The backup's revision, also in the file's header.
pub const BACKUP_REVISION: &str = "x-flotilla-backup-revision";

pub async fn download(State(state): State<Arc<HubState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    caller.require_unscoped("a backup")?;
    let (header, file) = state.store.backup(env!("CARGO_PKG_VERSION"), state.clock.now()).await?;
    tracing::info!(
        revision = header.revision,
        n_objects = header.n_objects,
        n_bytes = file.len(),
        token = %caller.token_id,
        "serving a backup"
    );
    let mut response = Response::new(Body::from(file));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(BACKUP_REVISION, HeaderValue::from(header.revision));
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename=\"flotilla-{}.backup\"", header.revision))
    {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}
