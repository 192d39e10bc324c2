//! Serves image blobs to enrolled devices: one stream per blob, resumable from an
//! offset, bytes straight from the content-addressed store. A device gets only the
//! blobs of the images its desired manifest names, or the one before it (kept to roll
//! back): each platform manifest, its config and its layers. Anything else is "not
//! available", whether the hub has it or not. A blob imported through another hub of
//! the cluster is fetched from it first (`replica.rs`).

use super::SyncError;
use crate::state::HubState;
use images::digest::Digest;
use images::oci::ImageManifest;
use shared_proto::store::{Object, StoreKind};
use shared_proto::wire::{self, BlobReply, BlobRequest};
use std::io::SeekFrom;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

/// Answers one blob request on `send`, written for a peer speaking `version`.
pub async fn serve<W: AsyncWrite + Unpin>(
    state: &HubState,
    device: &str,
    version: u32,
    req: BlobRequest,
    mut send: W,
) -> Result<(), SyncError> {
    let not_found = |message: String| BlobReply::NotFound { message };
    let digest = match Digest::parse(&req.digest) {
        Ok(d) => d,
        Err(e) => {
            wire::write_frame_for(&mut send, version, &not_found(format!("bad digest: {e}"))).await?;
            let _ = send.shutdown().await;
            return Ok(());
        }
    };
    let path = state.blobs.path(&digest);
    let file = match may_fetch(state, device, &digest).await? {
        true => {
            // Imported through another hub of the cluster: fetched from it first.
            if let Err(e) = super::replica::ensure_blob(state, &digest).await {
                tracing::warn!(%digest, error = %format!("{e:#}"), "cannot fetch a blob from the other hubs");
            }
            tokio::fs::File::open(&path).await.ok()
        }
        false => {
            tracing::info!(%device, %digest, "refusing a blob outside the device's desired images");
            None
        }
    };
    let Some(mut file) = file else {
        let message = format!(
            "blob {digest} is not available to {device}: it is in none of the images of its desired manifest, or not on this hub"
        );
        wire::write_frame_for(&mut send, version, &not_found(message)).await?;
        let _ = send.shutdown().await;
        return Ok(());
    };
    let size = file.metadata().await?.len();
    if req.offset > size {
        wire::write_frame_for(
            &mut send,
            version,
            &not_found(format!("offset {} is past the blob's {size} bytes", req.offset)),
        )
        .await?;
        let _ = send.shutdown().await;
        return Ok(());
    }
    wire::write_frame_for(&mut send, version, &BlobReply::Found { size }).await?;
    file.seek(SeekFrom::Start(req.offset)).await?;
    // Counted as it goes: a transfer cut short is resumed from an offset, and what it
    // sent before the cut was served all the same.
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        send.write_all(&buf[..n]).await?;
        state.metrics.blob_bytes_served(n as u64);
    }
    send.flush().await?;
    let _ = send.shutdown().await;
    Ok(())
}

/// An image manifest larger than this is not one the hub imported.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Whether `device`'s desired manifest, or the one before it, names an image that
/// `digest` belongs to.
async fn may_fetch(state: &HubState, device: &str, digest: &Digest) -> Result<bool, SyncError> {
    let mut images = match state.store.get(StoreKind::Manifest, device).await? {
        Some(Object::Manifest(m)) => crate::controllers::manifests::image_digests(&m),
        _ => return Ok(false),
    };
    if let Some(Object::PreviousImages(p)) = state.store.get(StoreKind::PreviousImages, device).await? {
        images.extend(p.image_digests);
    }
    for image in images {
        let Ok(image) = Digest::parse(&image) else { continue };
        if image == *digest {
            return Ok(true);
        }
        if let Err(e) = super::replica::ensure_blob(state, &image).await {
            tracing::warn!(%image, error = %format!("{e:#}"), "cannot fetch an image manifest from the other hubs");
        }
        let blobs = state.blobs.clone();
        let read = tokio::task::spawn_blocking(move || blobs.read_to_vec(&image, MAX_MANIFEST_BYTES)).await;
        let Ok(Ok(bytes)) = read else { continue };
        if let Ok(m) = serde_json::from_slice::<ImageManifest>(&bytes)
            && belongs_to(&m, digest)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `digest` is the config or a layer of `manifest`.
fn belongs_to(manifest: &ImageManifest, digest: &Digest) -> bool {
    manifest.config.digest == *digest || manifest.layers.iter().any(|l| l.digest == *digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use images::oci::Descriptor;

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn the_config_and_layers_belong_to_their_image_and_nothing_else_does() {
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: None,
            config: Descriptor::new(images::oci::MEDIA_TYPE_OCI_CONFIG, digest('a'), 1),
            layers: vec![
                Descriptor::new(images::oci::MEDIA_TYPE_OCI_LAYER, digest('b'), 1),
                Descriptor::new(images::oci::MEDIA_TYPE_OCI_LAYER, digest('c'), 1),
            ],
            annotations: Default::default(),
        };
        for c in ['a', 'b', 'c'] {
            assert!(belongs_to(&manifest, &digest(c)), "{c}");
        }
        assert!(!belongs_to(&manifest, &digest('d')));
    }
}
