//! Image pulls from the hub: manifest, config and layers fetched over the link to the
//! hub (QUIC or the TCP fallback; one stream per blob), each verified against its digest while it is
//! written to the local blob store, then unpacked into a read-only root filesystem.
//! Only a complete unpack is recorded, so a pull cut short by a crash starts over.

use crate::transport::HubLink;
use anyhow::{Context, anyhow, bail};
use images::blobstore::BlobStore;
use images::digest::Digest;
use images::oci::{ImageConfig, ImageManifest, MediaKind};
use shared_proto::agent_state::ImageRecord;
use shared_proto::clock::SharedClock;
use shared_proto::wire::{self, BlobReply, BlobRequest, MIN_PROTOCOL_VERSION, StreamOpen};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// Largest manifest or config accepted.
const MAX_JSON_BLOB: u64 = 4 << 20;
/// Largest layer accepted.
const MAX_LAYER: u64 = 8 << 30;
/// How long a pull waits for a connection to the hub.
const WAIT_FOR_HUB: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct Puller {
    pub blobs: BlobStore,
    pub images_dir: PathBuf,
    pub link: watch::Receiver<Option<HubLink>>,
    pub clock: SharedClock,
}

/// A `Read` over chunks sent from async code, so the blocking blob store can consume
/// a QUIC stream without buffering it whole.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Puller {
    async fn link(&self) -> anyhow::Result<HubLink> {
        let mut rx = self.link.clone();
        let wait = rx.wait_for(|c| c.as_ref().is_some_and(HubLink::is_alive));
        match tokio::time::timeout(WAIT_FOR_HUB, wait).await {
            Ok(Ok(c)) => c.clone().ok_or_else(|| anyhow!("no connection")),
            _ => bail!("the hub is not reachable"),
        }
    }

    /// Fetches one blob into the blob store (skipped when already there).
    async fn fetch(&self, link: &HubLink, digest: &Digest, max: u64) -> anyhow::Result<()> {
        if self.blobs.contains(digest) {
            return Ok(());
        }
        let (mut recv, mut send) = link.open_stream().await?;
        // Blob frames have not changed since version 1: any hub understands them.
        wire::write_frame_for(
            &mut send,
            MIN_PROTOCOL_VERSION,
            &StreamOpen::Blob(BlobRequest { digest: digest.to_string(), offset: 0 }),
        )
        .await?;
        let size = match wire::read_frame::<BlobReply, _>(&mut recv).await? {
            Some(BlobReply::Found { size }) => size,
            Some(BlobReply::NotFound { message }) => bail!("{message}"),
            None => bail!("the hub closed the blob stream"),
        };
        if size > max {
            bail!("blob {digest} is {size} bytes, over the {max}-byte limit");
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(16);
        let blobs = self.blobs.clone();
        let d = *digest;
        let writer = tokio::task::spawn_blocking(move || {
            blobs.put(ChannelReader { rx, buf: Vec::new(), pos: 0 }, &d, max)
        });
        let mut received = 0u64;
        loop {
            let mut chunk = vec![0u8; 64 * 1024];
            match recv.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    received += n as u64;
                    chunk.truncate(n);
                    if received > size || tx.send(Ok(chunk)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string())));
                    break;
                }
            }
        }
        drop(tx);
        writer.await?.with_context(|| format!("storing blob {digest}"))?;
        Ok(())
    }

    async fn fetch_json<T: serde::de::DeserializeOwned>(
        &self,
        link: &HubLink,
        digest: &Digest,
    ) -> anyhow::Result<T> {
        self.fetch(link, digest, MAX_JSON_BLOB).await?;
        let bytes = self.blobs.read_to_vec(digest, MAX_JSON_BLOB)?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {digest}"))
    }

    /// Pulls and unpacks the image with this platform manifest digest.
    pub async fn pull(&self, manifest_digest: &str) -> anyhow::Result<ImageRecord> {
        let digest = Digest::parse(manifest_digest)?;
        let link = self.link().await?;
        let manifest: ImageManifest = self.fetch_json(&link, &digest).await.context("image manifest")?;
        if manifest.media_type.as_deref().map(images::oci::media_kind) == Some(MediaKind::Index) {
            bail!("{digest} is an image index, not a platform manifest");
        }
        let config: ImageConfig =
            self.fetch_json(&link, &manifest.config.digest).await.context("image config")?;
        for layer in &manifest.layers {
            self.fetch(&link, &layer.digest, MAX_LAYER)
                .await
                .with_context(|| format!("layer {}", layer.digest))?;
        }
        let target = self.images_dir.join(digest.hex()).join("rootfs");
        let blobs = self.blobs.clone();
        let layers = manifest.layers.clone();
        let t = target.clone();
        let report = tokio::task::spawn_blocking(move || {
            if std::fs::symlink_metadata(&t).is_ok() {
                // Unpacked before a crash but never recorded: start clean.
                images::remove_rootfs(&t)?;
            }
            images::unpack_layers(&blobs, &layers, &t, &images::UnpackOptions::default())
                .map_err(anyhow::Error::from)
        })
        .await??;
        Ok(ImageRecord {
            manifest_digest: digest.to_string(),
            config: config.run_config(),
            rootfs: target.display().to_string(),
            size: report.size,
            unpacked_at: self.clock.now(),
        })
    }
}
