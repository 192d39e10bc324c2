//! The hub's image blob collection over a real store and blob directory: a blob lives
//! while any record leads to it (an image, a device's desired manifest, its previous
//! images), and goes once none does.

mod common;

use cloud_hub::sync::blob_gc::collect;
use hub_store::{Store, StoreConfig};
use images::digest::Digest;
use images::oci::{Descriptor, ImageManifest};
use shared_proto::manifest::{DesiredApp, DesiredContainer, DesiredManifest};
use shared_proto::store::{Object, Precondition, PreviousImagesRecord, StoreCommand, StoreKind};
use shared_proto::{Image, ImagePlatform, ImageSpec, ObjectMeta};
use std::time::Duration;

fn image_blobs(blobs: &images::BlobStore, tag: &str) -> (Digest, Vec<Digest>) {
    let config = blobs.put_bytes(format!("{{\"config of\":\"{tag}\"}}").as_bytes()).unwrap();
    let layer = blobs.put_bytes(format!("layer of {tag}").as_bytes()).unwrap();
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
        config: Descriptor::new("application/vnd.oci.image.config.v1+json", config, 1),
        layers: vec![Descriptor::new("application/vnd.oci.image.layer.v1.tar", layer, 1)],
        annotations: Default::default(),
    };
    let digest = blobs.put_bytes(&serde_json::to_vec(&manifest).unwrap()).unwrap();
    (digest, vec![digest, config, layer])
}

fn image(name: &str, manifest: Digest) -> Object {
    Object::Image(Image::new(
        ObjectMeta::named(name),
        ImageSpec {
            digest: manifest.to_string(),
            platforms: vec![ImagePlatform { manifest_digest: manifest.to_string(), ..Default::default() }],
        },
    ))
}

#[tokio::test]
async fn a_blob_lives_while_a_record_leads_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::single_node(dir.path().join("store"))).await.unwrap();
    let mut leader = store.leader();
    tokio::time::timeout(Duration::from_secs(30), leader.wait_for(|l| l.is_some())).await.unwrap().unwrap();
    let state = common::hub_state(dir.path(), &store).await;
    let put = |o: Object| store.write(StoreCommand::put(o, Precondition::None));
    let delete = |kind, name: &str| {
        store.write(StoreCommand::Delete { kind, name: name.into(), precondition: Precondition::None })
    };

    let (web, web_blobs) = image_blobs(&state.blobs, "web");
    let (pos, pos_blobs) = image_blobs(&state.blobs, "pos");
    let (old, old_blobs) = image_blobs(&state.blobs, "old");
    let stray = state.blobs.put_bytes(b"an upload nothing names").unwrap();
    put(image("web:1", web)).await.unwrap();
    put(image("pos:1", pos)).await.unwrap();
    // A device runs pos:1 and may roll back to old.
    let mut desired = DesiredManifest { device: "pi".into(), ..Default::default() };
    desired.apps.push(DesiredApp {
        containers: vec![DesiredContainer { image_digest: pos.to_string(), ..Default::default() }],
        ..Default::default()
    });
    put(Object::Manifest(desired)).await.unwrap();
    put(Object::PreviousImages(PreviousImagesRecord {
        device: "pi".into(),
        revision: 1,
        image_digests: vec![old.to_string()],
    }))
    .await
    .unwrap();
    let held = |d: &Digest| state.blobs.contains(d);

    // New blobs are kept, referenced or not.
    assert_eq!(collect(&state, Duration::from_secs(3600)).unwrap().blobs, 0);
    assert!(held(&stray));

    let done = collect(&state, Duration::ZERO).unwrap();
    assert_eq!(done.blobs, 1, "only the stray upload goes");
    assert!(!held(&stray));
    assert!(web_blobs.iter().chain(&pos_blobs).chain(&old_blobs).all(held));

    // pos:1's image object goes, but the device still runs it; web:1 goes for good.
    delete(StoreKind::Image, "pos:1").await.unwrap();
    delete(StoreKind::Image, "web:1").await.unwrap();
    collect(&state, Duration::ZERO).unwrap();
    assert!(pos_blobs.iter().all(held), "the device's desired image stays");
    assert!(web_blobs.iter().all(|d| !held(d)), "nothing leads to web:1 any more");
    assert!(old_blobs.iter().all(held), "the device may roll back to it");

    // The device is gone: its manifest and previous images with it.
    delete(StoreKind::Manifest, "pi").await.unwrap();
    delete(StoreKind::PreviousImages, "pi").await.unwrap();
    collect(&state, Duration::ZERO).unwrap();
    assert!(pos_blobs.iter().chain(&old_blobs).all(|d| !held(d)));
    assert!(state.blobs.list().unwrap().is_empty());
}
