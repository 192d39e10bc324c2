//! Derives each device's desired manifest from the apps placed on it. Pure: the
//! runner feeds it the store's contents and writes back the commands it returns.
//!
//! Images are resolved here, once, to the content digest of the platform manifest
//! matching the device's architecture, so agents never resolve tags themselves and
//! every device of one generation runs the same bytes.
//!
//! An update whose image cannot be resolved for a device does not take the app away
//! from that device: the device keeps the entry it has (the last good generation),
//! and the problem is reported. A store that loses its link to the hub keeps working;
//! a typo in an image tag must not stop it either.

use shared_proto::manifest::{ContainerLimits, DesiredApp, DesiredConfig, DesiredContainer, DesiredManifest};
use shared_proto::store::{Object, Precondition, PreviousImagesRecord, StoreCommand, StoreKind};
use shared_proto::{App, ContainerSpec, Device, Image};
use std::collections::{BTreeMap, BTreeSet};

/// `name` plus `:latest` when the reference has neither tag nor digest.
pub fn normalize_reference(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') || reference.contains('@') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

/// The platform manifest digest of `reference` for `arch`, or why there is none.
pub fn resolve_image(
    images: &BTreeMap<String, Image>,
    reference: &str,
    arch: &str,
) -> Result<String, String> {
    let reference = normalize_reference(reference);
    let image = if let Some((_, digest)) = reference.split_once('@') {
        // Pinned by digest: the index digest or one platform's manifest digest.
        let hit = images.values().find(|i| {
            i.spec.digest == digest || i.spec.platforms.iter().any(|p| p.manifest_digest == digest)
        });
        match hit {
            Some(i) if i.spec.digest != digest => return Ok(digest.to_string()),
            Some(i) => i,
            None => return Err(format!("image {reference} is not imported: run flotilla image import")),
        }
    } else {
        images
            .get(&reference)
            .ok_or_else(|| format!("image {reference} is not imported: run flotilla image import"))?
    };
    image
        .spec
        .platforms
        .iter()
        .find(|p| p.os == "linux" && p.architecture == arch)
        .map(|p| p.manifest_digest.clone())
        .ok_or_else(|| {
            let have: Vec<String> =
                image.spec.platforms.iter().map(|p| format!("{}/{}", p.os, p.architecture)).collect();
            format!("image {reference} has no linux/{arch} variant (it has {})", have.join(", "))
        })
}

fn desired_container(
    c: &ContainerSpec,
    images: &BTreeMap<String, Image>,
    arch: &str,
) -> Result<DesiredContainer, String> {
    let image_digest = resolve_image(images, &c.image, arch)?;
    let limits = &c.resources.limits;
    Ok(DesiredContainer {
        name: c.name.clone(),
        image: c.image.clone(),
        image_digest,
        command: c.command.clone(),
        args: c.args.clone(),
        env: c
            .env
            .iter()
            .filter(|e| e.value_from.is_none())
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        env_from: c.env.iter().filter_map(|e| Some((e.name.clone(), e.value_from.clone()?))).collect(),
        ports: c.ports.clone(),
        limits: ContainerLimits {
            cpu_millis: limits.cpu.map(|c| c.0),
            memory_bytes: limits.memory.map(|m| m.0),
            pids: limits.pids,
            cpu_shares: c.resources.requests.cpu.map(|r| cpu_shares(r.0)),
        },
        working_dir: c.working_dir.clone(),
        volume_mounts: c.volume_mounts.clone(),
        devices: c.devices.clone(),
        liveness_probe: c.liveness_probe.clone(),
        readiness_probe: c.readiness_probe.clone(),
        startup_probe: c.startup_probe.clone(),
        lifecycle: c.lifecycle.clone(),
        security: c.security.clone(),
    })
}

/// CPU weight for a request in millicores: 1024 per core, as the kernel's default
/// weight is one core's worth; never below the kernel's minimum of 2.
pub fn cpu_shares(millis: u64) -> u64 {
    (millis.saturating_mul(1024) / 1000).max(2)
}

fn desired_app(app: &App, images: &BTreeMap<String, Image>, arch: &str) -> Result<DesiredApp, String> {
    let containers =
        app.spec.containers.iter().map(|c| desired_container(c, images, arch)).collect::<Result<_, _>>()?;
    let init_containers = app
        .spec
        .init_containers
        .iter()
        .map(|c| desired_container(c, images, arch))
        .collect::<Result<_, _>>()?;
    Ok(DesiredApp {
        name: app.metadata.name.clone(),
        generation: app.metadata.generation,
        restart_policy: app.spec.restart_policy,
        network: app.spec.network,
        containers,
        init_containers,
        volumes: app.spec.volumes.clone(),
        grace_period_seconds: app
            .spec
            .termination_grace_period_seconds
            .unwrap_or(shared_proto::manifest::v1::DEFAULT_GRACE_SECONDS),
        network_policy: app.spec.network_policy.clone(),
        user_namespace: app.spec.user_namespace,
    })
}

/// Largest manifest written for one device (encoded): well inside the frame limit, so
/// a manifest always reaches its device.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// The write that brings one device's stored manifest to what its placed apps say,
/// if any, and what stood in the way (app → problem).
pub fn plan_device_manifest(
    device: &Device,
    placed: &BTreeSet<String>,
    apps: &BTreeMap<String, App>,
    images: &BTreeMap<String, Image>,
    configs: &BTreeMap<(bool, String), (u64, DesiredConfig)>,
    held: Option<&DesiredManifest>,
) -> (Option<StoreCommand>, BTreeMap<String, String>) {
    let name = &device.metadata.name;
    let mut problems = BTreeMap::new();
    let mut desired = Vec::new();
    for app_name in placed {
        let Some(app) = apps.get(app_name) else { continue };
        let missing = |d: &DesiredApp| {
            d.config_refs().into_iter().find(|r| !configs.contains_key(r)).map(|(secret, n)| {
                format!("{} {n:?} does not exist", if secret { "Secret" } else { "Config" })
            })
        };
        let planned = desired_app(app, images, &device.status.arch).and_then(|d| match missing(&d) {
            Some(problem) => Err(problem),
            None => Ok(d),
        });
        match planned {
            Ok(d) => desired.push(d),
            Err(problem) => {
                problems.insert(app_name.clone(), problem);
                if let Some(old) = held.and_then(|m| m.apps.iter().find(|a| &a.name == app_name)) {
                    desired.push(old.clone());
                }
            }
        }
    }
    desired.sort_by(|a, b| a.name.cmp(&b.name));
    // The Configs and Secrets the apps use, as they are now (an app kept at its old
    // version keeps its old references, which still exist: deleting one in use is
    // refused).
    let wanted: BTreeSet<(bool, String)> = desired.iter().flat_map(DesiredApp::config_refs).collect();
    let desired_configs: Vec<DesiredConfig> =
        wanted.iter().filter_map(|r| configs.get(r)).map(|(_, c)| c.clone()).collect();
    let precondition = match held {
        Some(m) if m.apps == desired && m.configs == desired_configs => return (None, problems),
        Some(m) => Precondition::RevisionIs(m.revision),
        None => Precondition::MustNotExist,
    };
    let manifest =
        DesiredManifest { device: name.clone(), revision: 0, apps: desired, configs: desired_configs };
    // When the images change, those of the manifest being replaced stay fetchable.
    let previous = held.filter(|m| image_digests(m) != image_digests(&manifest)).map(|m| {
        PreviousImagesRecord { device: name.clone(), revision: m.revision, image_digests: image_digests(m) }
    });
    let size = postcard::to_stdvec(&manifest).map_or(usize::MAX, |b| b.len());
    if size > MAX_MANIFEST_BYTES {
        let why =
            format!("the device's manifest would be {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit");
        for app in placed {
            problems.insert(app.clone(), why.clone());
        }
        return (None, problems);
    }
    let put = StoreCommand::put(Object::Manifest(manifest), precondition);
    let write = match previous {
        // Both or neither: the manifest's precondition guards the pair.
        Some(p) => {
            StoreCommand::Batch(vec![put, StoreCommand::put(Object::PreviousImages(p), Precondition::None)])
        }
        None => put,
    };
    (Some(write), problems)
}

/// The image digests a manifest names, sorted, each once.
pub fn image_digests(m: &DesiredManifest) -> Vec<String> {
    let set: BTreeSet<&str> = m
        .apps
        .iter()
        .flat_map(|a| a.containers.iter().chain(&a.init_containers))
        .map(|c| c.image_digest.as_str())
        .collect();
    set.into_iter().map(str::to_string).collect()
}

/// The write that removes the manifest of a device that is gone, and the images it
/// may fetch to roll back.
pub fn delete_manifest(held: &DesiredManifest) -> StoreCommand {
    StoreCommand::Batch(vec![
        StoreCommand::Delete {
            kind: StoreKind::Manifest,
            name: held.device.clone(),
            precondition: Precondition::RevisionIs(held.revision),
        },
        StoreCommand::Delete {
            kind: StoreKind::PreviousImages,
            name: held.device.clone(),
            precondition: Precondition::None,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::{AppSpec, ContainerSpec, DeviceSpec, ImagePlatform, ImageSpec, ObjectMeta};

    fn image(name: &str, archs: &[(&str, &str)]) -> Image {
        Image::new(
            ObjectMeta::named(name),
            ImageSpec {
                digest: format!("sha256:index-{name}"),
                platforms: archs
                    .iter()
                    .map(|(a, d)| ImagePlatform {
                        os: "linux".into(),
                        architecture: a.to_string(),
                        variant: String::new(),
                        manifest_digest: d.to_string(),
                        size: 1,
                    })
                    .collect(),
            },
        )
    }

    fn device(name: &str, arch: &str) -> Device {
        let mut d = Device::new(ObjectMeta::named(name), DeviceSpec::default());
        d.status.arch = arch.into();
        d
    }

    fn app(name: &str, generation: u64, image: &str) -> App {
        let mut meta = ObjectMeta::named(name);
        meta.generation = generation;
        App::new(
            meta,
            AppSpec {
                containers: vec![ContainerSpec {
                    name: "c".into(),
                    image: image.into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    /// Every app on every device, as the scheduler would place these apps.
    struct ManifestPlan {
        commands: Vec<StoreCommand>,
        problems: BTreeMap<String, BTreeMap<String, String>>,
    }

    fn run(
        apps: &[App],
        devices: &[Device],
        images: &[Image],
        current: &BTreeMap<String, DesiredManifest>,
    ) -> ManifestPlan {
        let apps_by_name: BTreeMap<String, App> =
            apps.iter().map(|a| (a.metadata.name.clone(), a.clone())).collect();
        let images = images.iter().map(|i| (i.metadata.name.clone(), i.clone())).collect();
        let placed: BTreeSet<String> = apps_by_name.keys().cloned().collect();
        let mut plan = ManifestPlan { commands: vec![], problems: BTreeMap::new() };
        for d in devices {
            let (cmd, problems) = plan_device_manifest(
                d,
                &placed,
                &apps_by_name,
                &images,
                &Default::default(),
                current.get(&d.metadata.name),
            );
            plan.commands.extend(cmd);
            for (app, p) in problems {
                plan.problems.entry(app).or_default().insert(d.metadata.name.clone(), p);
            }
        }
        for (name, m) in current {
            if !devices.iter().any(|d| &d.metadata.name == name) {
                plan.commands.push(delete_manifest(m));
            }
        }
        plan
    }

    fn manifests(plan: &ManifestPlan) -> BTreeMap<String, DesiredManifest> {
        plan.commands
            .iter()
            .flat_map(|c| match c {
                StoreCommand::Batch(inner) => inner.iter().collect(),
                other => vec![other],
            })
            .filter_map(|c| match c {
                StoreCommand::Put { object, .. } => match object.as_ref() {
                    Object::Manifest(m) => Some((m.device.clone(), m.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn resolves_per_architecture_and_defaults_to_latest() {
        let images = [image("web:latest", &[("amd64", "sha256:x86"), ("arm64", "sha256:arm")])];
        let plan = run(
            &[app("web", 1, "web")],
            &[device("a", "amd64"), device("b", "arm64")],
            &images,
            &BTreeMap::new(),
        );
        let m = manifests(&plan);
        assert_eq!(m["a"].apps[0].containers[0].image_digest, "sha256:x86");
        assert_eq!(m["b"].apps[0].containers[0].image_digest, "sha256:arm");
        assert!(plan.problems.is_empty());
    }

    #[test]
    fn unchanged_manifests_are_not_rewritten() {
        let images = [image("web:1", &[("amd64", "sha256:x86")])];
        let devices = [device("a", "amd64")];
        let first = manifests(&run(&[app("web", 1, "web:1")], &devices, &images, &BTreeMap::new()));
        let mut held = first.clone();
        held.get_mut("a").unwrap().revision = 7;
        let second = run(&[app("web", 1, "web:1")], &devices, &images, &held);
        assert!(second.commands.is_empty(), "{:?}", second.commands);
        let third = run(&[app("web", 2, "web:1")], &devices, &images, &held);
        assert!(matches!(
            &third.commands[0],
            StoreCommand::Put { precondition: Precondition::RevisionIs(7), .. }
        ));
    }

    #[test]
    fn a_manifest_whose_images_change_keeps_the_previous_ones_fetchable() {
        let images = [image("web:1", &[("amd64", "sha256:one")]), image("web:2", &[("amd64", "sha256:two")])];
        let devices = [device("a", "amd64")];
        let mut held = manifests(&run(&[app("web", 1, "web:1")], &devices, &images, &BTreeMap::new()));
        held.get_mut("a").unwrap().revision = 7;
        let plan = run(&[app("web", 2, "web:2")], &devices, &images, &held);
        let [StoreCommand::Batch(pair)] = plan.commands.as_slice() else { panic!("{:?}", plan.commands) };
        assert!(matches!(&pair[0], StoreCommand::Put { precondition: Precondition::RevisionIs(7), .. }));
        let want = PreviousImagesRecord {
            device: "a".into(),
            revision: 7,
            image_digests: vec!["sha256:one".into()],
        };
        assert_eq!(pair[1], StoreCommand::put(Object::PreviousImages(want), Precondition::None));
    }

    #[test]
    fn a_missing_image_keeps_the_last_good_generation() {
        let images = [image("web:1", &[("amd64", "sha256:x86")])];
        let devices = [device("a", "amd64")];
        let mut held = manifests(&run(&[app("web", 1, "web:1")], &devices, &images, &BTreeMap::new()));
        held.get_mut("a").unwrap().revision = 3;
        let plan = run(&[app("web", 2, "web:2")], &devices, &images, &held);
        assert!(plan.commands.is_empty(), "the device must keep generation 1");
        assert!(plan.problems["web"]["a"].contains("not imported"));
        // A device that never ran the app gets nothing for it, and is told why.
        let plan = run(&[app("web", 2, "web:2")], &[device("b", "amd64")], &images, &BTreeMap::new());
        assert!(manifests(&plan)["b"].apps.is_empty());
        let arm = run(&[app("web", 1, "web:1")], &[device("c", "arm64")], &images, &BTreeMap::new());
        assert!(arm.problems["web"]["c"].contains("no linux/arm64"));
    }

    #[test]
    fn an_oversized_manifest_is_a_problem_not_a_write() {
        let images = [image("web:1", &[("amd64", "sha256:x86")])];
        let mut big = app("web", 1, "web:1");
        big.spec.containers[0].env = (0..300)
            .map(|i| shared_proto::EnvVar {
                name: format!("V{i}"),
                value: "x".repeat(4000),
                ..Default::default()
            })
            .collect();
        let plan = run(&[big], &[device("a", "amd64")], &images, &BTreeMap::new());
        assert!(plan.commands.is_empty());
        assert!(plan.problems["web"]["a"].contains("over the"), "{:?}", plan.problems);
    }

    #[test]
    fn deleted_devices_lose_their_manifest() {
        let held = BTreeMap::from([(
            "gone".to_string(),
            DesiredManifest { device: "gone".into(), revision: 4, apps: vec![], ..Default::default() },
        )]);
        let plan = run(&[], &[], &[], &held);
        assert_eq!(
            plan.commands,
            vec![StoreCommand::Batch(vec![
                StoreCommand::Delete {
                    kind: StoreKind::Manifest,
                    name: "gone".into(),
                    precondition: Precondition::RevisionIs(4)
                },
                StoreCommand::Delete {
                    kind: StoreKind::PreviousImages,
                    name: "gone".into(),
                    precondition: Precondition::None
                }
            ])]
        );
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use shared_proto::{
        AppSpec, ContainerSpec, EnvSource, EnvVar, ImagePlatform, ImageSpec, KeyRef, ObjectMeta,
    };
    use shared_proto::{ObjectRef, VolumeSpec};

    fn config(secret: bool, name: &str, digest: &str) -> ((bool, String), (u64, DesiredConfig)) {
        let data = if secret { vec![] } else { vec![("k".to_string(), b"v".to_vec())] };
        ((secret, name.into()), (1, DesiredConfig { name: name.into(), secret, digest: digest.into(), data }))
    }

    #[test]
    fn manifests_carry_the_configs_their_apps_use_and_wait_for_missing_ones() {
        let image = Image::new(
            ObjectMeta::named("img:1"),
            ImageSpec {
                digest: "sha256:i".into(),
                platforms: vec![ImagePlatform {
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    variant: String::new(),
                    manifest_digest: "sha256:m".into(),
                    size: 1,
                }],
            },
        );
        let images: BTreeMap<String, Image> = [("img:1".to_string(), image)].into();
        let mut device = Device::new(ObjectMeta::named("pi"), Default::default());
        device.status.arch = "amd64".into();
        let app = App::new(
            ObjectMeta::named("pos"),
            AppSpec {
                containers: vec![ContainerSpec {
                    name: "c".into(),
                    image: "img:1".into(),
                    env: vec![EnvVar {
                        name: "PW".into(),
                        value: String::new(),
                        value_from: Some(EnvSource {
                            secret: Some(KeyRef { name: "creds".into(), key: "pw".into() }),
                            config: None,
                        }),
                    }],
                    ..Default::default()
                }],
                volumes: vec![VolumeSpec {
                    name: "conf".into(),
                    config: Some(ObjectRef { name: "pos-conf".into() }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let apps: BTreeMap<String, App> = [("pos".to_string(), app)].into();
        let placed: BTreeSet<String> = ["pos".to_string()].into();
        // The secret is missing: the app waits, with the reason.
        let configs: BTreeMap<_, _> = [config(false, "pos-conf", "sha256:1")].into();
        let (cmd, problems) = plan_device_manifest(&device, &placed, &apps, &images, &configs, None);
        assert_eq!(problems["pos"], "Secret \"creds\" does not exist");
        let Some(StoreCommand::Put { object, .. }) = cmd else { panic!("{cmd:?}") };
        let Object::Manifest(empty) = *object else { panic!() };
        assert!(empty.apps.is_empty() && empty.configs.is_empty());
        // Both exist: the manifest names them, the secret without its data.
        let mut configs = configs;
        configs.extend([config(true, "creds", "hmac-sha256:a"), config(false, "unused", "sha256:9")]);
        let (cmd, problems) = plan_device_manifest(&device, &placed, &apps, &images, &configs, None);
        assert!(problems.is_empty());
        let Some(StoreCommand::Put { object, .. }) = cmd else { panic!() };
        let Object::Manifest(mut m) = *object else { panic!() };
        let names: Vec<(&str, bool)> = m.configs.iter().map(|c| (c.name.as_str(), c.secret)).collect();
        assert_eq!(names, vec![("pos-conf", false), ("creds", true)]);
        assert!(m.configs[1].data.is_empty());
        m.revision = 5;
        // Unchanged: nothing to write. A new digest: a new manifest.
        assert!(plan_device_manifest(&device, &placed, &apps, &images, &configs, Some(&m)).0.is_none());
        configs.insert((true, "creds".into()), config(true, "creds", "hmac-sha256:b").1);
        assert!(plan_device_manifest(&device, &placed, &apps, &images, &configs, Some(&m)).0.is_some());
    }
}
