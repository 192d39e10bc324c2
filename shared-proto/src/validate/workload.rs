//! Validation of what an app asks of its device beyond processes: volumes and their
//! mounts, devices, probes and hooks, the sandbox settings, and the network policy.
//! Paths and names are bounded and checked here so the agent never has to guess what
//! an operator meant; what the device allows (host paths, devices) is the agent's
//! own allow-list, checked there.

use super::{FieldErrors, MAX_STRING, config_key_problem, dns_label_problem};
use crate::resource::{AppSpec, ContainerSpec, NetworkMode};
use crate::workload::{Handler, HttpGetAction, Probe};
use std::collections::BTreeMap;

pub const MAX_VOLUMES: usize = 32;
pub const MAX_MOUNTS: usize = 32;
pub const MAX_DEVICES: usize = 32;
/// Longest period, delay or grace an app may ask for, in seconds.
pub const MAX_SECONDS: u32 = 3600;
/// Largest tmpfs volume.
pub const MAX_TMPFS_BYTES: u64 = 1 << 30;
pub const MAX_POLICY_ENTRIES: usize = 64;

/// The capabilities a container may add or drop by name (without `CAP_`).
pub const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

/// A capability name as written (`NET_RAW`, `cap_net_raw`) in its canonical form.
pub fn capability_name(s: &str) -> Option<String> {
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    (CAPABILITIES.contains(&bare) || bare == "ALL").then(|| bare.to_string())
}

/// An absolute path with no `.` or `..` component and no NUL, bounded.
pub fn path_problem(p: &str) -> Option<String> {
    if p.len() > MAX_STRING || p.contains('\0') {
        return Some(format!("must be at most {MAX_STRING} bytes without NUL"));
    }
    if !p.starts_with('/') {
        return Some("must be an absolute path".into());
    }
    if p.split('/').any(|c| c == ".." || c == ".") {
        return Some("must not contain . or .. components".into());
    }
    None
}

/// Checks the app's volumes; returns each volume's name and whether it is read-only
/// by nature (configs and secrets).
pub(super) fn check_volumes(errs: &mut FieldErrors, spec: &AppSpec) -> BTreeMap<String, bool> {
    let mut seen = BTreeMap::new();
    if spec.volumes.len() > MAX_VOLUMES {
        errs.push("spec.volumes", format!("at most {MAX_VOLUMES} volumes"));
    }
    for (i, v) in spec.volumes.iter().enumerate() {
        let f = format!("spec.volumes[{i}]");
        if let Some(p) = dns_label_problem(&v.name) {
            errs.push(format!("{f}.name"), p);
        } else if seen.contains_key(&v.name) {
            errs.push(format!("{f}.name"), format!("{:?} is used by another volume", v.name));
        }
        let n_sources = [
            v.persistent.is_some(),
            v.host_path.is_some(),
            v.tmpfs.is_some(),
            v.config.is_some(),
            v.secret.is_some(),
        ]
        .into_iter()
        .filter(|x| *x)
        .count();
        if n_sources != 1 {
            errs.push(
                f.clone(),
                "set exactly one of persistent, hostPath, tmpfs, config and secret".to_string(),
            );
        }
        if let Some(h) = &v.host_path
            && let Some(p) = path_problem(&h.path)
        {
            errs.push(format!("{f}.hostPath.path"), p);
        }
        if let Some(t) = &v.tmpfs
            && let Some(size) = t.size_bytes
            && !(4096..=MAX_TMPFS_BYTES).contains(&size)
        {
            errs.push(format!("{f}.tmpfs.sizeBytes"), format!("must be between 4096 and {MAX_TMPFS_BYTES}"));
        }
        for (field, r) in [("config", &v.config), ("secret", &v.secret)] {
            if let Some(r) = r
                && let Some(p) = dns_label_problem(&r.name)
            {
                errs.push(format!("{f}.{field}.name"), p);
            }
        }
        seen.insert(v.name.clone(), v.config.is_some() || v.secret.is_some());
    }
    seen
}

pub(super) fn check_container_extras(
    errs: &mut FieldErrors,
    f: &str,
    c: &ContainerSpec,
    volumes: &BTreeMap<String, bool>,
    init: bool,
) {
    if c.volume_mounts.len() > MAX_MOUNTS {
        errs.push(format!("{f}.volumeMounts"), format!("at most {MAX_MOUNTS} mounts"));
    }
    let mut paths = BTreeMap::new();
    for (j, m) in c.volume_mounts.iter().enumerate() {
        let mf = format!("{f}.volumeMounts[{j}]");
        if !volumes.contains_key(&m.name) {
            errs.push(format!("{mf}.name"), format!("no volume {:?} in spec.volumes", m.name));
        }
        if let Some(p) = path_problem(&m.mount_path) {
            errs.push(format!("{mf}.mountPath"), p);
        } else if m.mount_path == "/" {
            errs.push(format!("{mf}.mountPath"), "must not be the container's root");
        } else if paths.insert(m.mount_path.trim_end_matches('/').to_string(), j).is_some() {
            errs.push(format!("{mf}.mountPath"), format!("{} is mounted twice", m.mount_path));
        }
    }
    if c.devices.len() > MAX_DEVICES {
        errs.push(format!("{f}.devices"), format!("at most {MAX_DEVICES} devices"));
    }
    for (j, d) in c.devices.iter().enumerate() {
        let df = format!("{f}.devices[{j}]");
        match path_problem(&d.host_path) {
            Some(p) => errs.push(format!("{df}.hostPath"), p),
            None if !d.host_path.starts_with("/dev/") => {
                errs.push(format!("{df}.hostPath"), "must be a device node under /dev/");
            }
            None => {}
        }
        if !d.container_path.is_empty()
            && let Some(p) = path_problem(&d.container_path)
        {
            errs.push(format!("{df}.containerPath"), p);
        }
        if !d.permissions.is_empty()
            && (d.permissions.len() > 3 || !d.permissions.chars().all(|ch| "rwm".contains(ch)))
        {
            errs.push(format!("{df}.permissions"), "must be made of r, w and m");
        }
    }
    let probes = [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ];
    for (name, probe) in probes {
        let Some(p) = probe else { continue };
        let pf = format!("{f}.{name}");
        if init {
            errs.push(pf, "init containers run to completion and take no probes");
            continue;
        }
        check_probe(errs, &pf, p, name != "readinessProbe");
    }
    for (name, h) in [("postStart", &c.lifecycle.post_start), ("preStop", &c.lifecycle.pre_stop)] {
        let Some(h) = h else { continue };
        let hf = format!("{f}.lifecycle.{name}");
        if init {
            errs.push(hf, "init containers take no lifecycle hooks");
            continue;
        }
        check_handler(errs, &hf, h);
    }
    let s = &c.security;
    for (field, list) in
        [("addCapabilities", &s.add_capabilities), ("dropCapabilities", &s.drop_capabilities)]
    {
        if list.len() > super::workload::CAPABILITIES.len() + 1 {
            errs.push(format!("{f}.security.{field}"), "too many entries");
            continue;
        }
        for (j, cap) in list.iter().enumerate() {
            if capability_name(cap).is_none() {
                errs.push(
                    format!("{f}.security.{field}[{j}]"),
                    format!("{cap:?} is not a Linux capability (for example NET_RAW, SYS_TIME, or ALL)"),
                );
            }
        }
    }
    for (j, e) in c.env.iter().enumerate() {
        let Some(from) = &e.value_from else { continue };
        let ef = format!("{f}.env[{j}]");
        if !e.value.is_empty() {
            errs.push(format!("{ef}.value"), "set either value or valueFrom, not both");
        }
        if from.config.is_some() == from.secret.is_some() {
            errs.push(format!("{ef}.valueFrom"), "set exactly one of config and secret");
        }
        for (field, r) in [("config", &from.config), ("secret", &from.secret)] {
            let Some(r) = r else { continue };
            if let Some(p) = dns_label_problem(&r.name) {
                errs.push(format!("{ef}.valueFrom.{field}.name"), p);
            }
            if let Some(p) = config_key_problem(&r.key) {
                errs.push(format!("{ef}.valueFrom.{field}.key"), p);
            }
        }
    }
}

fn check_probe(errs: &mut FieldErrors, f: &str, p: &Probe, success_must_be_one: bool) {
    let n =
        [p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some()].into_iter().filter(|x| *x).count();
    if n != 1 {
        errs.push(f, "set exactly one of exec, httpGet and tcpSocket");
    }
    if let Some(e) = &p.exec {
        check_exec(errs, &format!("{f}.exec.command"), &e.command);
    }
    if let Some(h) = &p.http_get {
        check_http(errs, &format!("{f}.httpGet"), h);
    }
    if let Some(t) = &p.tcp_socket
        && t.port == 0
    {
        errs.push(format!("{f}.tcpSocket.port"), "must be between 1 and 65535");
    }
    for (field, v, min) in [
        ("initialDelaySeconds", p.initial_delay_seconds, 0),
        ("periodSeconds", p.period_seconds, 1),
        ("timeoutSeconds", p.timeout_seconds, 1),
        ("successThreshold", p.success_threshold, 1),
        ("failureThreshold", p.failure_threshold, 1),
    ] {
        if v < min || v > MAX_SECONDS {
            errs.push(format!("{f}.{field}"), format!("must be between {min} and {MAX_SECONDS}"));
        }
    }
    if success_must_be_one && p.success_threshold != 1 {
        errs.push(format!("{f}.successThreshold"), "must be 1 for liveness and startup probes");
    }
}

fn check_handler(errs: &mut FieldErrors, f: &str, h: &Handler) {
    if h.exec.is_some() == h.http_get.is_some() {
        errs.push(f, "set exactly one of exec and httpGet");
    }
    if let Some(e) = &h.exec {
        check_exec(errs, &format!("{f}.exec.command"), &e.command);
    }
    if let Some(g) = &h.http_get {
        check_http(errs, &format!("{f}.httpGet"), g);
    }
}

fn check_exec(errs: &mut FieldErrors, f: &str, command: &[String]) {
    if command.is_empty() {
        errs.push(f, "must name a program");
    }
    super::check_string_list(errs, f, command);
}

fn check_http(errs: &mut FieldErrors, f: &str, h: &HttpGetAction) {
    if h.port == 0 {
        errs.push(format!("{f}.port"), "must be between 1 and 65535");
    }
    if !h.path.starts_with('/')
        || h.path.len() > 1024
        || h.path.chars().any(|c| c.is_ascii_control() || c == ' ')
    {
        errs.push(format!("{f}.path"), "must start with / and hold no spaces or control characters");
    }
    if h.headers.len() > 16 {
        errs.push(format!("{f}.headers"), "at most 16 headers");
    }
    for (j, (k, v)) in h.headers.iter().enumerate() {
        let token = !k.is_empty()
            && k.len() <= 64
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !token || v.len() > 1024 || v.chars().any(|c| c.is_ascii_control()) {
            errs.push(
                format!("{f}.headers[{j}]"),
                "must be a header name and a value without control characters",
            );
        }
    }
}

/// Most ids a container in a user namespace can use: the agent maps 65536 per app.
pub const USER_NAMESPACE_IDS: u32 = 65536;

/// What cannot work inside a user namespace, by the field that asks for it.
fn check_user_namespace(errs: &mut FieldErrors, spec: &AppSpec) {
    if spec.network == NetworkMode::Host {
        errs.push(
            "spec.userNamespace",
            "needs the app's own network (a user namespace cannot mount /sys for the device's): \
             set spec.network to None or Isolated",
        );
    }
    let lists = [("initContainers", &spec.init_containers), ("containers", &spec.containers)];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            let f = format!("spec.{list}[{i}].security");
            if c.security.privileged {
                errs.push(
                    format!("{f}.privileged"),
                    "cannot be combined with spec.userNamespace: a privileged container needs the device's root",
                );
            }
            for (field, id) in
                [("runAsUser", c.security.run_as_user), ("runAsGroup", c.security.run_as_group)]
            {
                if id.is_some_and(|id| id >= USER_NAMESPACE_IDS) {
                    errs.push(
                        format!("{f}.{field}"),
                        format!("with spec.userNamespace, must be below {USER_NAMESPACE_IDS} (the ids the app gets)"),
                    );
                }
            }
        }
    }
}

pub(super) fn check_app_extras(errs: &mut FieldErrors, spec: &AppSpec) {
    if let Some(g) = spec.termination_grace_period_seconds
        && g > MAX_SECONDS
    {
        errs.push("spec.terminationGracePeriodSeconds", format!("must be at most {MAX_SECONDS}"));
    }
    if spec.user_namespace {
        check_user_namespace(errs, spec);
    }
    let Some(policy) = &spec.network_policy else { return };
    if spec.network != NetworkMode::Isolated {
        errs.push("spec.networkPolicy", "applies to network Isolated only: set spec.network to Isolated");
    }
    for (field, list) in [("ingressApps", &policy.ingress_apps), ("egressApps", &policy.egress_apps)] {
        let Some(list) = list else { continue };
        if list.len() > MAX_POLICY_ENTRIES {
            errs.push(format!("spec.networkPolicy.{field}"), format!("at most {MAX_POLICY_ENTRIES} apps"));
        }
        for (j, a) in list.iter().enumerate() {
            if let Some(p) = dns_label_problem(a) {
                errs.push(format!("spec.networkPolicy.{field}[{j}]"), p);
            }
        }
    }
    if let Some(cidrs) = &policy.egress_cidrs {
        if cidrs.len() > MAX_POLICY_ENTRIES {
            errs.push("spec.networkPolicy.egressCidrs", format!("at most {MAX_POLICY_ENTRIES} networks"));
        }
        for (j, c) in cidrs.iter().enumerate() {
            if parse_cidr(c).is_none() {
                errs.push(
                    format!("spec.networkPolicy.egressCidrs[{j}]"),
                    format!("{c:?} is not a network such as 10.0.0.0/8 or 2001:db8::/32"),
                );
            }
        }
    }
}

/// `addr/prefix` with the prefix within the address family's width.
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

#[cfg(test)]
mod tests {
    use crate::ObjectMeta;
    use crate::resource::{App, AppSpec, ContainerSpec, EnvVar, NetworkMode};
    use crate::validate::validate_app;
    use crate::workload::*;

    fn app(edit: impl FnOnce(&mut AppSpec)) -> Vec<String> {
        let mut spec = AppSpec {
            containers: vec![ContainerSpec {
                name: "main".into(),
                image: "img:1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        edit(&mut spec);
        match validate_app(&App::new(ObjectMeta::named("pos"), spec)) {
            Ok(()) => vec![],
            Err(e) => e.0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect(),
        }
    }

    fn has(errs: &[String], field: &str) -> bool {
        errs.iter().any(|e| e.starts_with(&format!("{field}: ")))
    }

    #[test]
    fn user_namespaces_are_refused_only_where_they_cannot_work() {
        assert!(
            app(|s| {
                s.user_namespace = true;
                s.network = NetworkMode::Isolated;
                s.containers[0].security.run_as_user = Some(1000);
            })
            .is_empty()
        );
        assert!(
            app(|s| {
                s.user_namespace = true;
                s.network = NetworkMode::None;
                s.containers[0].security.run_as_user = Some(65535);
            })
            .is_empty()
        );
        let errs = app(|s| s.user_namespace = true);
        assert!(
            errs.len() == 1 && has(&errs, "spec.userNamespace") && errs[0].contains("spec.network"),
            "{errs:?}"
        );
        let errs = app(|s| {
            s.user_namespace = true;
            s.network = NetworkMode::None;
            s.containers[0].security.privileged = true;
            s.containers[0].security.run_as_group = Some(70000);
            s.init_containers = vec![s.containers[0].clone()];
            s.init_containers[0].name = "init".into();
            s.init_containers[0].security = SecuritySpec { run_as_user: Some(65536), ..Default::default() };
        });
        assert!(has(&errs, "spec.containers[0].security.privileged"), "{errs:?}");
        assert!(has(&errs, "spec.containers[0].security.runAsGroup"), "{errs:?}");
        assert!(has(&errs, "spec.initContainers[0].security.runAsUser"), "{errs:?}");
        assert_eq!(errs.len(), 3, "{errs:?}");
        // Without a user namespace, none of it matters.
        assert!(app(|s| s.containers[0].security.run_as_user = Some(70000)).is_empty());
    }

    #[test]
    fn a_full_store_app_is_valid() {
        let errs = app(|s| {
            s.network = NetworkMode::Isolated;
            s.termination_grace_period_seconds = Some(30);
            s.volumes = vec![
                VolumeSpec { name: "db".into(), persistent: Some(PersistentVolume {}), ..Default::default() },
                VolumeSpec {
                    name: "scratch".into(),
                    tmpfs: Some(TmpfsVolume { size_bytes: Some(1 << 20) }),
                    ..Default::default()
                },
                VolumeSpec {
                    name: "logs".into(),
                    host_path: Some(HostPathVolume { path: "/var/log/pos".into() }),
                    ..Default::default()
                },
                VolumeSpec {
                    name: "conf".into(),
                    config: Some(ObjectRef { name: "pos-conf".into() }),
                    ..Default::default()
                },
                VolumeSpec {
                    name: "creds".into(),
                    secret: Some(ObjectRef { name: "pos-creds".into() }),
                    ..Default::default()
                },
            ];
            s.network_policy = Some(NetworkPolicy {
                ingress_apps: Some(vec!["till".into()]),
                egress_apps: Some(vec![]),
                egress_cidrs: Some(vec!["203.0.113.0/24".into(), "2001:db8::/32".into()]),
            });
            s.init_containers =
                vec![ContainerSpec { name: "migrate".into(), image: "img:1".into(), ..Default::default() }];
            let c = &mut s.containers[0];
            c.volume_mounts =
                vec![VolumeMount { name: "db".into(), mount_path: "/var/lib/db".into(), read_only: false }];
            c.devices = vec![DeviceMapping {
                host_path: "/dev/ttyUSB0".into(),
                container_path: String::new(),
                permissions: "rw".into(),
            }];
            c.liveness_probe = Some(Probe {
                exec: Some(ExecAction { command: vec!["/bin/true".into()] }),
                ..Default::default()
            });
            c.readiness_probe = Some(Probe {
                http_get: Some(HttpGetAction { path: "/ready".into(), port: 8080, headers: vec![] }),
                success_threshold: 2,
                ..Default::default()
            });
            c.startup_probe = Some(Probe {
                tcp_socket: Some(TcpSocketAction { port: 8080 }),
                failure_threshold: 30,
                ..Default::default()
            });
            c.lifecycle.pre_stop =
                Some(Handler { exec: Some(ExecAction { command: vec!["/drain".into()] }), http_get: None });
            c.security.add_capabilities = vec!["NET_RAW".into(), "cap_sys_time".into()];
            c.security.drop_capabilities = vec!["ALL".into()];
            c.env = vec![EnvVar {
                name: "DB_PASSWORD".into(),
                value: String::new(),
                value_from: Some(EnvSource {
                    secret: Some(KeyRef { name: "pos-creds".into(), key: "db.password".into() }),
                    config: None,
                }),
            }];
        });
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn each_mistake_names_its_field() {
        let errs = app(|s| {
            s.volumes = vec![
                VolumeSpec { name: "a".into(), ..Default::default() },
                VolumeSpec {
                    name: "b".into(),
                    host_path: Some(HostPathVolume { path: "/srv/../etc".into() }),
                    ..Default::default()
                },
                VolumeSpec { name: "b".into(), persistent: Some(PersistentVolume {}), ..Default::default() },
            ];
            s.network_policy =
                Some(NetworkPolicy { egress_cidrs: Some(vec!["10.0.0.0/33".into()]), ..Default::default() });
            s.termination_grace_period_seconds = Some(100_000);
            s.init_containers = vec![ContainerSpec {
                name: "main".into(),
                image: "img:1".into(),
                liveness_probe: Some(Probe {
                    tcp_socket: Some(TcpSocketAction { port: 1 }),
                    ..Default::default()
                }),
                ..Default::default()
            }];
            let c = &mut s.containers[0];
            c.volume_mounts = vec![
                VolumeMount { name: "nope".into(), mount_path: "data".into(), read_only: false },
                VolumeMount { name: "b".into(), mount_path: "/".into(), read_only: false },
            ];
            c.devices = vec![DeviceMapping {
                host_path: "/etc/shadow".into(),
                container_path: String::new(),
                permissions: "rwx".into(),
            }];
            c.liveness_probe = Some(Probe { success_threshold: 2, period_seconds: 0, ..Default::default() });
            c.readiness_probe = Some(Probe {
                http_get: Some(HttpGetAction { path: "no slash".into(), port: 0, headers: vec![] }),
                ..Default::default()
            });
            c.lifecycle.post_start = Some(Handler::default());
            c.security.add_capabilities = vec!["FLY".into()];
            c.env = vec![
                EnvVar { name: "K".into(), value: "v".into(), value_from: Some(EnvSource::default()) },
                EnvVar {
                    name: "L".into(),
                    value: String::new(),
                    value_from: Some(EnvSource {
                        config: Some(KeyRef { name: "conf".into(), key: "a/b".into() }),
                        secret: None,
                    }),
                },
            ];
        });
        for field in [
            "spec.volumes[0]",
            "spec.volumes[1].hostPath.path",
            "spec.volumes[2].name",
            "spec.networkPolicy",
            "spec.networkPolicy.egressCidrs[0]",
            "spec.terminationGracePeriodSeconds",
            "spec.initContainers[0].name",
            "spec.initContainers[0].livenessProbe",
            "spec.containers[0].volumeMounts[0].name",
            "spec.containers[0].volumeMounts[0].mountPath",
            "spec.containers[0].volumeMounts[1].mountPath",
            "spec.containers[0].devices[0].hostPath",
            "spec.containers[0].devices[0].permissions",
            "spec.containers[0].livenessProbe",
            "spec.containers[0].livenessProbe.successThreshold",
            "spec.containers[0].livenessProbe.periodSeconds",
            "spec.containers[0].readinessProbe.httpGet.path",
            "spec.containers[0].readinessProbe.httpGet.port",
            "spec.containers[0].lifecycle.postStart",
            "spec.containers[0].security.addCapabilities[0]",
            "spec.containers[0].env[0].value",
            "spec.containers[0].env[0].valueFrom",
            "spec.containers[0].env[1].valueFrom.config.key",
        ] {
            assert!(has(&errs, field), "no error for {field}: {errs:#?}");
        }
    }

    #[test]
    fn capability_names_are_canonical() {
        assert_eq!(super::capability_name("cap_net_raw").as_deref(), Some("NET_RAW"));
        assert_eq!(super::capability_name("ALL").as_deref(), Some("ALL"));
        assert_eq!(super::capability_name("NET_FLY"), None);
    }
}
