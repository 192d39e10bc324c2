//! Image blobs across a hub cluster. An image is imported through one hub's API and its
//! blobs land in that hub's blob store only; the store replicates the image's record, not
//! its bytes. So a hub asked for a blob it lacks (by a device it serves) fetches it from a
//! peer first: `GET /peer/v1/blobs/{digest}` on the peers' Raft listener, which only hubs
//! reach (mutual TLS with a hub's raft name, see `hub_store::peer_tls`). The bytes are
//! verified against the digest as they are stored, so a peer cannot hand over anything else.

use crate::state::HubState;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use images::digest::Digest;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

/// How long one peer has to send a whole blob.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The routes this hub serves its peers.
pub fn peer_routes(state: Arc<HubState>) -> Router {
    Router::new().route("/peer/v1/blobs/{digest}", axum::routing::get(serve_blob)).with_state(state)
}

async fn serve_blob(State(state): State<Arc<HubState>>, Path(digest): Path<String>) -> Response {
    let Ok(digest) = Digest::parse(&digest) else {
        return (StatusCode::BAD_REQUEST, "not a digest").into_response();
    };
    let file = match tokio::fs::File::open(state.blobs.path(&digest)).await {
        Ok(f) => f,
        Err(_) => return (StatusCode::NOT_FOUND, "this hub does not hold the blob").into_response(),
    };
    let size = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let chunks = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let body = axum::body::Body::from_stream(chunks);
    ([(axum::http::header::CONTENT_LENGTH, size.to_string())], body).into_response()
}

/// Makes sure this hub holds `digest`: fetched from the first peer that has it when it
/// does not. `Ok(false)`: no peer has it either.
pub async fn ensure_blob(state: &HubState, digest: &Digest) -> anyhow::Result<bool> {
    if state.blobs.contains(digest) {
        return Ok(true);
    }
    let st = state.store.status();
    let peers: Vec<u64> =
        st.voters.keys().chain(st.learners.keys()).copied().filter(|id| *id != st.node_id).collect();
    for peer in peers {
        match fetch_from(state, peer, digest).await {
            Ok(true) => {
                tracing::info!(%digest, peer, "fetched a blob this hub lacked from a peer");
                return Ok(true);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%digest, peer, error = %format!("{e:#}"), "fetching a blob from a peer failed")
            }
        }
    }
    Ok(false)
}

async fn fetch_from(state: &HubState, peer: u64, digest: &Digest) -> anyhow::Result<bool> {
    let mut resp = state.store.peer_get(peer, &format!("/peer/v1/blobs/{digest}"), FETCH_TIMEOUT).await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(false);
    }
    anyhow::ensure!(resp.status().is_success(), "answered {}", resp.status());
    let max = state.config.max_image_bytes;
    if let Some(len) = resp.content_length() {
        anyhow::ensure!(len <= max, "the blob is {len} bytes, more than the {max} an image may hold");
    }
    // The blob store reads synchronously: chunks go through a small channel to a blocking
    // task, which verifies the digest and the size bound as it writes.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(8);
    let blobs = state.blobs.clone();
    let want = *digest;
    let writer =
        tokio::task::spawn_blocking(move || blobs.put(ChunkReader { rx, current: Bytes::new() }, &want, max));
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if tx.send(Ok(chunk)).await.is_err() {
                    break; // The writer gave up (too large, or a digest mismatch).
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Err(e.to_string())).await;
                break;
            }
        }
    }
    drop(tx);
    writer.await??;
    Ok(true)
}

struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}
