//! Garbage collection of the hub's image blobs. The store is the one record of what is
//! referenced: an `Image` (its index and platform manifests), a device's desired
//! `Manifest` (the images it runs, even when their `Image` object was deleted since), and
//! a device's `PreviousImages` (what it may roll back to). Each of those references a
//! manifest, which references its config and layers, so a blob lives as long as one
//! record in the store leads to it, however many do: every hub of a cluster marks from
//! the same replicated records and sweeps its own blob directory.
//!
//! Marking is pure ([`roots`], [`mark`], [`sweep`]); [`run`] reads the store and the disk.
//! Blobs written within [`KEEP_NEW`] are never swept: an import or a peer fetch stores its
//! blobs before the record that references them.

use crate::state::HubState;
use images::digest::Digest;
use images::oci::{ImageIndex, ImageManifest};
use shared_proto::store::{Object, StoreKind};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

/// Blobs younger than this are kept whatever references them.
pub const KEEP_NEW: Duration = Duration::from_secs(3600);
/// A sweep runs this often anyway.
pub const EVERY: Duration = Duration::from_secs(600);
/// And this long after a change that may free blobs (changes meanwhile wait for it).
pub const AFTER_CHANGE: Duration = Duration::from_secs(60);
/// Largest manifest or index read while marking.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// The blobs the store's records name directly.
pub fn roots<'a>(objects: impl IntoIterator<Item = &'a Object>) -> BTreeSet<Digest> {
    let mut out = BTreeSet::new();
    let mut add = |d: &str| {
        if let Ok(d) = Digest::parse(d) {
            out.insert(d);
        }
    };
    for o in objects {
        match o {
            Object::Image(i) => {
                add(&i.spec.digest);
                for p in &i.spec.platforms {
                    add(&p.manifest_digest);
                }
            }
            Object::Manifest(m) => {
                for d in crate::controllers::manifests::image_digests(m) {
                    add(&d);
                }
            }
            Object::PreviousImages(p) => {
                for d in &p.image_digests {
                    add(d);
                }
            }
            _ => {}
        }
    }
    out
}

/// `roots` and everything they lead to: an index's manifests, a manifest's config and
/// layers. `read` gives a blob's bytes when this hub holds it.
pub fn mark(roots: &BTreeSet<Digest>, read: impl Fn(&Digest) -> Option<Vec<u8>>) -> BTreeSet<Digest> {
    let mut marked = BTreeSet::new();
    let mut todo: Vec<Digest> = roots.iter().copied().collect();
    while let Some(d) = todo.pop() {
        if !marked.insert(d) {
            continue;
        }
        let Some(bytes) = read(&d) else { continue };
        if let Ok(m) = serde_json::from_slice::<ImageManifest>(&bytes) {
            marked.insert(m.config.digest);
            marked.extend(m.layers.iter().map(|l| l.digest));
        } else if let Ok(index) = serde_json::from_slice::<ImageIndex>(&bytes) {
            todo.extend(index.manifests.iter().map(|m| m.digest));
        }
    }
    marked
}

/// The blobs to remove: held, unmarked, and older than `keep_new` at `now`.
pub fn sweep(
    held: &[(Digest, SystemTime)],
    marked: &BTreeSet<Digest>,
    now: SystemTime,
    keep_new: Duration,
) -> Vec<Digest> {
    held.iter()
        .filter(|(d, written)| {
            !marked.contains(d) && now.duration_since(*written).is_ok_and(|age| age >= keep_new)
        })
        .map(|(d, _)| *d)
        .collect()
}

/// How one collection went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub blobs: usize,
    pub bytes: u64,
}

/// Marks from this hub's copy of the store and sweeps its blob directory once.
pub fn collect(state: &HubState, keep_new: Duration) -> anyhow::Result<Collected> {
    let mut objects = Vec::new();
    for kind in [StoreKind::Image, StoreKind::Manifest, StoreKind::PreviousImages] {
        objects.extend(state.store.list_local(kind)?);
    }
    let roots = roots(&objects);
    let blobs = &state.blobs;
    let marked = mark(&roots, |d| blobs.read_to_vec(d, MAX_MANIFEST_BYTES).ok());
    let mut held = Vec::new();
    for d in blobs.list()? {
        // A blob gone meanwhile, or unreadable, is left alone.
        if let Ok(written) = std::fs::metadata(blobs.path(&d)).and_then(|m| m.modified()) {
            held.push((d, written));
        }
    }
    let mut done = Collected::default();
    for d in sweep(&held, &marked, SystemTime::now(), keep_new) {
        let size = blobs.size(&d).unwrap_or(0);
        if blobs.remove(&d)? {
            done.blobs += 1;
            done.bytes += size;
        }
    }
    Ok(done)
}

/// Collects every [`EVERY`], and [`AFTER_CHANGE`] after a change that may free blobs
/// (an image deleted, a device's manifest or previous images changed), at most once per
/// that interval, until the store closes.
pub async fn run(state: std::sync::Arc<HubState>) {
    let (_, mut rx) = state.store.subscribe();
    let mut due = tokio::time::Instant::now() + EVERY;
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(batch) => {
                    let frees = batch.changes.iter().any(|c| match c.kind {
                        StoreKind::Image => c.object.is_none(),
                        StoreKind::Manifest | StoreKind::PreviousImages => true,
                        _ => false,
                    });
                    if frees {
                        due = due.min(tokio::time::Instant::now() + AFTER_CHANGE);
                    }
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    due = due.min(tokio::time::Instant::now() + AFTER_CHANGE);
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = tokio::time::sleep_until(due) => {}
        }
        if state.store.is_closed() {
            return;
        }
        due = tokio::time::Instant::now() + EVERY;
        let s = state.clone();
        match tokio::task::spawn_blocking(move || collect(&s, KEEP_NEW)).await {
            Ok(Ok(c)) if c.blobs > 0 => {
                tracing::info!(blobs = c.blobs, bytes = c.bytes, "removed image blobs nothing references")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "image blob collection failed"),
            Err(e) => tracing::warn!(error = %e, "image blob collection failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use images::oci::Descriptor;
    use shared_proto::manifest::{DesiredApp, DesiredContainer, DesiredManifest};
    use shared_proto::store::PreviousImagesRecord;
    use shared_proto::{Image, ImagePlatform, ImageSpec, ObjectMeta};
    use std::collections::HashMap;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn manifest(config: char, layers: &[char]) -> Vec<u8> {
        serde_json::to_vec(&ImageManifest {
            schema_version: 2,
            media_type: None,
            config: Descriptor::new("application/vnd.oci.image.config.v1+json", d(config), 1),
            layers: layers
                .iter()
                .map(|l| Descriptor::new("application/vnd.oci.image.layer.v1.tar", d(*l), 1))
                .collect(),
            annotations: Default::default(),
        })
        .unwrap()
    }

    #[test]
    fn every_record_that_leads_to_a_blob_keeps_it() {
        let image = Object::Image(Image::new(
            ObjectMeta::named("web"),
            ImageSpec {
                digest: d('e').to_string(),
                platforms: vec![ImagePlatform { manifest_digest: d('a').to_string(), ..Default::default() }],
            },
        ));
        let mut desired = DesiredManifest { device: "pi".into(), ..Default::default() };
        desired.apps.push(DesiredApp {
            containers: vec![DesiredContainer { image_digest: d('b').to_string(), ..Default::default() }],
            ..Default::default()
        });
        let previous = Object::PreviousImages(PreviousImagesRecord {
            device: "pi".into(),
            revision: 1,
            image_digests: vec![d('f').to_string()],
        });
        let roots = roots(&[image, Object::Manifest(desired), previous]);
        assert_eq!(roots, BTreeSet::from([d('e'), d('a'), d('b'), d('f')]));

        let index = serde_json::to_vec(&ImageIndex {
            schema_version: 2,
            media_type: None,
            manifests: vec![Descriptor::new("application/vnd.oci.image.manifest.v1+json", d('a'), 1)],
            annotations: Default::default(),
        })
        .unwrap();
        let blobs: HashMap<Digest, Vec<u8>> = HashMap::from([
            (d('e'), index),
            (d('a'), manifest('c', &['1', '2'])),
            (d('b'), manifest('c', &['2', '3'])),
            // `f` is on another hub: nothing below it is known here.
        ]);
        let marked = mark(&roots, |x| blobs.get(x).cloned());
        let want: BTreeSet<Digest> = ['e', 'a', 'b', 'f', 'c', '1', '2', '3'].into_iter().map(d).collect();
        assert_eq!(marked, want);
    }

    #[test]
    fn only_old_unmarked_blobs_are_swept() {
        let now = SystemTime::now();
        let old = now - Duration::from_secs(7200);
        let new = now - Duration::from_secs(60);
        let held = [(d('a'), old), (d('b'), old), (d('c'), new)];
        let marked = BTreeSet::from([d('a')]);
        assert_eq!(sweep(&held, &marked, now, KEEP_NEW), [d('b')]);
        assert_eq!(sweep(&held, &marked, now, Duration::ZERO), [d('b'), d('c')]);
        // A clock that went backwards keeps everything it cannot date.
        assert!(sweep(&[(d('b'), now + Duration::from_secs(5))], &marked, now, Duration::ZERO).is_empty());
    }
}
