//! Serves image blobs to enrolled devices: one stream per blob, resumable from an
//! offset, bytes straight from the content-addressed store.

use super::SyncError;
use crate::state::HubState;
use shared_proto::wire::{self, BlobReply, BlobRequest};
use std::io::SeekFrom;
use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt};

/// Answers one blob request on `send`, written for a peer speaking `version`.
pub async fn serve<W: AsyncWrite + Unpin>(
    state: &HubState,
    version: u32,
    req: BlobRequest,
    mut send: W,
) -> Result<(), SyncError> {
    let not_found = |message: String| BlobReply::NotFound { message };
    let digest = match images::digest::Digest::parse(&req.digest) {
        Ok(d) => d,
        Err(e) => {
            wire::write_frame_for(&mut send, version, &not_found(format!("bad digest: {e}"))).await?;
            let _ = send.shutdown().await;
            return Ok(());
        }
    };
    let path = state.blobs.path(&digest);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => {
            wire::write_frame_for(
                &mut send,
                version,
                &not_found(format!("blob {digest} is not on this hub")),
            )
            .await?;
            let _ = send.shutdown().await;
            return Ok(());
        }
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
    tokio::io::copy(&mut file, &mut send).await?;
    send.flush().await?;
    let _ = send.shutdown().await;
    Ok(())
}
