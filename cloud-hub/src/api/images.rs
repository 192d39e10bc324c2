//! Image import: `POST /api/v1/images` with an OCI image-layout archive as the body.
//! The body streams to a temporary file (never whole into memory), the archive is
//! checked blob by blob into the hub's content-addressed store, and an `Image` object
//! naming its per-platform manifests goes through Raft.

use super::HubState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::objects::to_json;
use crate::controllers::manifests::normalize_reference;
use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use shared_proto::store::{Object, Precondition, Role, StoreCommand, StoreKind, StoreOutcome};
use shared_proto::{Image, ImageStatus, ObjectMeta, validate};
use std::io::Write;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct ImportQuery {
    /// Reference to import as; defaults to the archive's `org.opencontainers.image.ref.name`.
    pub name: Option<String>,
}

pub async fn import(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Operator)?;
    caller.require_unscoped("importing an image")?;
    let limit = state.config.max_image_bytes;
    let tmp_dir = state.config.data_dir.join("tmp");
    std::fs::create_dir_all(&tmp_dir)
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", tmp_dir.display())))?;
    let mut file = tempfile::NamedTempFile::new_in(&tmp_dir)
        .map_err(|e| ApiError::Internal(format!("creating a temporary file: {e}")))?;
    let mut n: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the upload: {e}")))?;
        n += chunk.len() as u64;
        if n > limit {
            return Err(ApiError::TooLarge(limit));
        }
        file.write_all(&chunk).map_err(|e| ApiError::Internal(format!("buffering the upload: {e}")))?;
    }
    if n == 0 {
        return Err(ApiError::BadRequest("empty body: send an OCI image-layout archive".into()));
    }
    let blobs = state.blobs.clone();
    let path = file.path().to_path_buf();
    let imported = tokio::task::spawn_blocking(move || {
        images::layout::import_path(&path, &blobs, &images::layout::ImportLimits::default())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("import task: {e}")))?
    .map_err(|e| ApiError::BadRequest(format!("not a usable OCI image archive: {e}")))?;
    drop(file);

    let name = match q.name.or(imported.ref_name.clone()) {
        Some(n) => normalize_reference(&n),
        None => {
            return Err(ApiError::BadRequest(
                "the archive names no image (no org.opencontainers.image.ref.name): pass --name".into(),
            ));
        }
    };
    if let Some(p) = validate::image_reference_problem(&name) {
        return Err(ApiError::invalid("name", p));
    }
    let mut image = Image::new(ObjectMeta::named(name.clone()), imported.to_image_spec());
    image.status = ImageStatus { imported_at: Some(state.clock.now()) };
    image.metadata.uid = crate::util::random_hex(16);
    image.metadata.generation = 1;
    image.metadata.created_at = image.status.imported_at;
    // Re-importing a reference replaces it: the same tag may point at new bytes.
    let created = state.store.get(StoreKind::Image, &name).await?.is_none();
    match state.store.write(StoreCommand::put(Object::Image(image), Precondition::None)).await? {
        StoreOutcome::Applied { .. } => {}
        StoreOutcome::Conflict { .. } | StoreOutcome::Each(_) => {
            return Err(ApiError::Conflict("image changed during import; retry".into()));
        }
    }
    let stored = state
        .store
        .get_local(StoreKind::Image, &name)?
        .ok_or_else(|| ApiError::Internal("image vanished right after it was written".into()))?;
    tracing::info!(image = %name, bytes = n, "image imported");
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(to_json(&stored))))
}
