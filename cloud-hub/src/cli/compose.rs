//! `flotilla convert compose FILE` and `flotilla apply -f docker-compose.yml`: a
//! Compose project becomes one App, its services the App's containers. They share
//! the pod's network, so a service reaches another at `localhost` or by its name (the
//! pod's `/etc/hosts` lists every container); a service that others wait for with
//! `condition: service_completed_successfully` becomes an init container.
//!
//! Nothing is dropped silently: what has no equivalent is refused with its path
//! (`services.web.build is not supported: …`), and what is approximated is said
//! (`notes`). Pure: text in, App (or the list of problems) out.

use serde_json::Value;
use shared_proto::workload::{
    DeviceMapping, ExecAction, HostPathVolume, PersistentVolume, Probe, SecuritySpec, TmpfsVolume,
    VolumeMount, VolumeSpec,
};
use shared_proto::{
    App, AppSpec, Bytes, ContainerSpec, CpuMillis, EnvVar, LabelSelector, NetworkMode, ObjectMeta, PortSpec,
    Protocol, RestartPolicy,
};
use std::collections::BTreeMap;

/// What a conversion produced: the App, and what was approximated.
#[derive(Debug)]
pub struct Converted {
    pub app: App,
    pub notes: Vec<String>,
}

/// A Compose file is one whose top level has `services` and no `kind`.
pub fn is_compose(doc: &Value) -> bool {
    doc.get("services").is_some() && doc.get("kind").is_none()
}

/// Top-level keys handled or knowingly ignored.
const TOP_LEVEL: &[&str] = &["version", "name", "services", "volumes"];
/// Service keys handled.
const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "ports",
    "volumes",
    "tmpfs",
    "devices",
    "restart",
    "healthcheck",
    "depends_on",
    "privileged",
    "cap_add",
    "cap_drop",
    "user",
    "working_dir",
    "read_only",
    "mem_limit",
    "cpus",
    "pids_limit",
    "deploy",
    "stop_grace_period",
    "network_mode",
    "container_name",
    "hostname",
    "labels",
    "logging",
];

struct Ctx {
    problems: Vec<String>,
    notes: Vec<String>,
}

impl Ctx {
    fn bad(&mut self, path: &str, why: impl std::fmt::Display) {
        self.problems.push(format!("{path}: {why}"));
    }
}

/// Converts a Compose document into an App named `name`, placed by `selector`
/// (from `--selector` or the file's `x-flotilla.selector`).
pub fn convert(
    doc: &Value,
    name: &str,
    selector: BTreeMap<String, String>,
) -> Result<Converted, Vec<String>> {
    let mut cx = Ctx { problems: vec![], notes: vec![] };
    let Some(top) = doc.as_object() else { return Err(vec!["the file is not a Compose mapping".into()]) };
    for key in top.keys() {
        if !TOP_LEVEL.contains(&key.as_str()) && !key.starts_with("x-") {
            cx.bad(
                key,
                "is not supported (Flotilla apps have no custom networks, Compose configs or secrets)",
            );
        }
    }
    let mut named_volumes: Vec<String> = vec![];
    if let Some(vols) = top.get("volumes").and_then(Value::as_object) {
        for (v, def) in vols {
            let plain = def.is_null() || def.as_object().is_some_and(|o| o.is_empty());
            if !plain {
                cx.bad(
                    &format!("volumes.{v}"),
                    "drivers and options are not supported: a named volume is a directory on the device",
                );
            }
            named_volumes.push(v.clone());
        }
    }
    let Some(services) = top.get("services").and_then(Value::as_object) else {
        return Err(vec!["services: must be a mapping of services".into()]);
    };
    // Services others wait for to complete run first, as init containers.
    let mut run_first: Vec<String> = vec![];
    for s in services.values() {
        if let Some(deps) = s.get("depends_on").and_then(Value::as_object) {
            for (dep, how) in deps {
                if how.get("condition").and_then(Value::as_str) == Some("service_completed_successfully")
                    && !run_first.contains(dep)
                {
                    run_first.push(dep.clone());
                }
            }
        }
    }
    let mut spec = AppSpec {
        selector: LabelSelector { match_labels: selector, ..Default::default() },
        ..Default::default()
    };
    let mut volumes: Vec<VolumeSpec> = vec![];
    let mut host_network = false;
    let mut publishes = false;
    let mut policies: BTreeMap<String, RestartPolicy> = BTreeMap::new();
    let mut grace: Option<u32> = None;
    for (svc, s) in services {
        let p = format!("services.{svc}");
        let Some(obj) = s.as_object() else {
            cx.bad(&p, "must be a mapping");
            continue;
        };
        for key in obj.keys() {
            if !SERVICE_KEYS.contains(&key.as_str()) && !key.starts_with("x-") {
                let why = match key.as_str() {
                    "build" => "is not supported: build the image in CI and `flotilla image import` it",
                    "networks" => "is not supported: an app's services share one network",
                    "env_file" => "is not supported: put the variables in environment",
                    "secrets" | "configs" => "is not supported yet",
                    _ => "is not supported",
                };
                cx.bad(&format!("{p}.{key}"), why);
            }
        }
        let mut c = ContainerSpec { name: svc.clone(), ..Default::default() };
        match obj.get("image").and_then(Value::as_str) {
            Some(i) => c.image = i.to_string(),
            None => cx.bad(&format!("{p}.image"), "is required (images come from the hub, not from build)"),
        }
        if let Some(e) = obj.get("entrypoint") {
            c.command = words(&mut cx, &format!("{p}.entrypoint"), e);
        }
        if let Some(e) = obj.get("command") {
            c.args = words(&mut cx, &format!("{p}.command"), e);
        }
        c.env = environment(&mut cx, &format!("{p}.environment"), obj.get("environment"));
        if let Some(w) = obj.get("working_dir").and_then(Value::as_str) {
            c.working_dir = w.to_string();
        }
        match obj.get("network_mode").and_then(Value::as_str) {
            None => {}
            Some("host") => host_network = true,
            Some("none") => {}
            Some(other) => {
                cx.bad(&format!("{p}.network_mode"), format!("{other:?} is not supported (host or none)"))
            }
        }
        for (i, port) in obj.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
            if let Some(ps) = port_spec(&mut cx, &format!("{p}.ports[{i}]"), port) {
                publishes |= ps.host_port.is_some();
                c.ports.push(ps);
            }
        }
        for (i, v) in obj.get("volumes").and_then(Value::as_array).into_iter().flatten().enumerate() {
            if let Some(m) = volume(&mut cx, &format!("{p}.volumes[{i}]"), v, &named_volumes, &mut volumes) {
                c.volume_mounts.push(m);
            }
        }
        let tmpfs: Vec<String> = match obj.get("tmpfs") {
            Some(Value::String(t)) => vec![t.clone()],
            Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
            _ => vec![],
        };
        for t in tmpfs {
            let path = t.split(':').next().unwrap_or_default().to_string();
            let vname = format!("tmpfs-{}", volumes.len());
            volumes.push(VolumeSpec {
                name: vname.clone(),
                tmpfs: Some(TmpfsVolume { size_bytes: None }),
                ..Default::default()
            });
            c.volume_mounts.push(VolumeMount { name: vname, mount_path: path, read_only: false });
        }
        for (i, d) in obj.get("devices").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let Some(d) = d.as_str() else {
                cx.bad(&format!("{p}.devices[{i}]"), "must be HOST[:CONTAINER[:PERMISSIONS]]");
                continue;
            };
            let parts: Vec<&str> = d.split(':').collect();
            c.devices.push(DeviceMapping {
                host_path: parts[0].to_string(),
                container_path: parts.get(1).map(|s| s.to_string()).unwrap_or_default(),
                permissions: parts.get(2).map(|s| s.to_string()).unwrap_or_default(),
            });
        }
        if let Some(r) = obj.get("restart").and_then(Value::as_str) {
            let policy = match r {
                "no" => Some(RestartPolicy::Never),
                "always" | "unless-stopped" => Some(RestartPolicy::Always),
                r if r.starts_with("on-failure") => {
                    if r.contains(':') {
                        cx.notes.push(format!(
                            "{p}.restart: the retry limit of {r:?} is dropped: failures back off instead"
                        ));
                    }
                    Some(RestartPolicy::OnFailure)
                }
                other => {
                    cx.bad(&format!("{p}.restart"), format!("{other:?} is not a restart policy"));
                    None
                }
            };
            if let Some(policy) = policy {
                policies.insert(svc.clone(), policy);
            }
        }
        if let Some(h) = obj.get("healthcheck") {
            c.readiness_probe = healthcheck(&mut cx, &format!("{p}.healthcheck"), h);
        }
        if let Some(deps) = obj.get("depends_on") {
            let waits_healthy = deps.as_object().is_some_and(|d| {
                d.values().any(|h| h.get("condition").and_then(Value::as_str) == Some("service_healthy"))
            });
            if waits_healthy {
                cx.notes.push(format!(
                    "{p}.depends_on: service_healthy is not waited for: an app's containers start together (use an init container or a startupProbe)"
                ));
            }
        }
        let mut sec = SecuritySpec {
            privileged: obj.get("privileged") == Some(&Value::Bool(true)),
            ..Default::default()
        };
        sec.add_capabilities = strings(obj.get("cap_add"));
        sec.drop_capabilities = strings(obj.get("cap_drop"));
        sec.read_only_root_filesystem = obj.get("read_only") == Some(&Value::Bool(true));
        if let Some(u) = obj.get("user") {
            let u = scalar(u);
            let mut parts = u.split(':');
            match (parts.next().map(str::parse::<u32>), parts.next().map(str::parse::<u32>)) {
                (Some(Ok(uid)), None) => sec.run_as_user = Some(uid),
                (Some(Ok(uid)), Some(Ok(gid))) => {
                    (sec.run_as_user, sec.run_as_group) = (Some(uid), Some(gid))
                }
                _ => cx.bad(&format!("{p}.user"), format!("{u:?}: only numeric uid[:gid]")),
            }
        }
        c.security = sec;
        let limits = &mut c.resources.limits;
        if let Some(m) = obj.get("mem_limit") {
            limits.memory = memory(&mut cx, &format!("{p}.mem_limit"), m);
        }
        if let Some(cpus) = obj.get("cpus") {
            limits.cpu = CpuMillis::parse(&scalar(cpus)).map_err(|e| cx.bad(&format!("{p}.cpus"), e)).ok();
        }
        if let Some(n) = obj.get("pids_limit").and_then(Value::as_u64) {
            limits.pids = Some(n);
        }
        if let Some(d) = obj.get("deploy") {
            for key in d.as_object().into_iter().flat_map(|o| o.keys()) {
                if key != "resources" {
                    cx.bad(
                        &format!("{p}.deploy.{key}"),
                        "is not supported (placement is the App's selector)",
                    );
                }
            }
            let l = &d["resources"]["limits"];
            if let Some(m) = l.get("memory") {
                limits.memory = memory(&mut cx, &format!("{p}.deploy.resources.limits.memory"), m);
            }
            if let Some(cpus) = l.get("cpus") {
                limits.cpu = CpuMillis::parse(&scalar(cpus))
                    .map_err(|e| cx.bad(&format!("{p}.deploy.resources.limits.cpus"), e))
                    .ok();
            }
            if let Some(n) = l.get("pids").and_then(Value::as_u64) {
                limits.pids = Some(n);
            }
        }
        if let Some(g) = obj.get("stop_grace_period") {
            match duration_secs(&scalar(g)) {
                Some(s) => grace = Some(grace.unwrap_or(0).max(s)),
                None => cx.bad(&format!("{p}.stop_grace_period"), "must be a duration such as 10s or 1m30s"),
            }
        }
        for key in ["container_name", "hostname", "labels", "logging"] {
            if obj.contains_key(key) {
                cx.notes
                    .push(format!("{p}.{key} is ignored (the agent names containers and keeps their logs)"));
            }
        }
        if run_first.contains(svc) {
            spec.init_containers.push(c);
        } else {
            spec.containers.push(c);
        }
    }
    let mut distinct: Vec<RestartPolicy> = vec![];
    for p in policies.values() {
        if !distinct.contains(p) {
            distinct.push(*p);
        }
    }
    match distinct.len() {
        0 => spec.restart_policy = RestartPolicy::Always,
        1 => spec.restart_policy = distinct[0],
        _ => cx.bad(
            "services.*.restart",
            format!("services ask for different restart policies {policies:?}: an app has one"),
        ),
    }
    if publishes || host_network {
        if publishes && !host_network {
            cx.notes.push("ports are published: the app uses the device's network (network: Host)".into());
        }
        spec.network = NetworkMode::Host;
    } else {
        spec.network = NetworkMode::None;
    }
    if spec.network == NetworkMode::Host {
        for c in spec.containers.iter().chain(&spec.init_containers) {
            for port in &c.ports {
                if let Some(h) = port.host_port.filter(|h| *h != port.container_port) {
                    cx.bad(
                        &format!("services.{}.ports", c.name),
                        format!(
                            "{h}:{}: mapping a port to another needs the device bridge, which is not supported yet; publish {0}:{0}",
                            port.container_port
                        ),
                    );
                }
            }
        }
    }
    spec.volumes = volumes;
    spec.termination_grace_period_seconds = grace;
    let app = App::new(ObjectMeta::named(name), spec);
    if let Err(errs) = shared_proto::validate::validate_app(&app) {
        cx.problems.extend(errs.0.into_iter().map(|e| format!("{} (as converted): {}", e.field, e.message)));
    }
    if cx.problems.is_empty() { Ok(Converted { app, notes: cx.notes }) } else { Err(cx.problems) }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).into_iter().flatten().map(scalar).collect()
}

/// A command as Compose writes it: a list, or a string split like a shell would
/// split words (quotes and backslashes; no expansion).
fn words(cx: &mut Ctx, path: &str, v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(scalar).collect(),
        Value::String(s) => match split_words(s) {
            Some(w) => w,
            None => {
                cx.bad(path, "has an unclosed quote");
                vec![]
            }
        },
        _ => {
            cx.bad(path, "must be a string or a list");
            vec![]
        }
    }
}

pub fn split_words(s: &str) -> Option<Vec<String>> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => cur.push(chars.next()?),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Some(out)
}

fn environment(cx: &mut Ctx, path: &str, v: Option<&Value>) -> Vec<EnvVar> {
    let mut env = vec![];
    match v {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if v.is_null() {
                    cx.bad(
                        &format!("{path}.{k}"),
                        "takes its value from the machine running compose: set one",
                    );
                } else {
                    env.push(EnvVar { name: k.clone(), value: scalar(v), value_from: None });
                }
            }
        }
        Some(Value::Array(a)) => {
            for (i, e) in a.iter().enumerate() {
                match scalar(e).split_once('=') {
                    Some((k, v)) => env.push(EnvVar { name: k.into(), value: v.into(), value_from: None }),
                    None => cx.bad(
                        &format!("{path}[{i}]"),
                        "takes its value from the machine running compose: set one",
                    ),
                }
            }
        }
        Some(_) => cx.bad(path, "must be a list or a mapping"),
    }
    env
}

fn port_spec(cx: &mut Ctx, path: &str, v: &Value) -> Option<PortSpec> {
    let (spec, protocol) = match v {
        Value::Object(o) => {
            let target = o.get("target").and_then(Value::as_u64)?;
            let published = o.get("published").map(scalar);
            let proto = o.get("protocol").and_then(Value::as_str).unwrap_or("tcp").to_string();
            (format!("{}{target}", published.map(|p| format!("{p}:")).unwrap_or_default()), proto)
        }
        other => {
            let s = scalar(other);
            match s.split_once('/') {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => (s, "tcp".into()),
            }
        }
    };
    let protocol = match protocol.as_str() {
        "tcp" => Protocol::TCP,
        "udp" => Protocol::UDP,
        other => {
            cx.bad(path, format!("protocol {other:?} is not supported"));
            return None;
        }
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let parse = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    let (host, container) = match parts[..] {
        [c] => (None, parse(c)),
        [h, c] => (Some(parse(h)), parse(c)),
        [_ip, h, c] => {
            cx.notes.push(format!(
                "{path}: the host address is dropped: the port is published on every address of the device"
            ));
            (Some(parse(h)), parse(c))
        }
        _ => (None, None),
    };
    match (host, container) {
        (None, Some(c)) => {
            Some(PortSpec { name: String::new(), container_port: c, host_port: None, protocol })
        }
        (Some(Some(h)), Some(c)) => {
            Some(PortSpec { name: String::new(), container_port: c, host_port: Some(h), protocol })
        }
        _ => {
            cx.bad(path, format!("{spec:?}: only single ports (HOST:CONTAINER), not ranges"));
            None
        }
    }
}

fn volume(
    cx: &mut Ctx,
    path: &str,
    v: &Value,
    named: &[String],
    volumes: &mut Vec<VolumeSpec>,
) -> Option<VolumeMount> {
    let (kind, source, target, read_only) = match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let ro = parts.get(2).is_some_and(|o| o.split(',').any(|o| o == "ro"));
            match parts[..] {
                [t] => ("anonymous", String::new(), t.to_string(), false),
                [src, t] | [src, t, _] => {
                    let kind = if src.starts_with('/') || src.starts_with('.') || src.starts_with('~') {
                        "bind"
                    } else {
                        "volume"
                    };
                    (kind, src.to_string(), t.to_string(), ro)
                }
                _ => {
                    cx.bad(path, "must be SOURCE:TARGET[:ro]");
                    return None;
                }
            }
        }
        Value::Object(o) => {
            let kind = o.get("type").and_then(Value::as_str).unwrap_or("volume");
            let kind = match kind {
                "volume" => "volume",
                "bind" => "bind",
                "tmpfs" => "tmpfs",
                other => {
                    cx.bad(path, format!("type {other:?} is not supported"));
                    return None;
                }
            };
            let source = o.get("source").map(scalar).unwrap_or_default();
            let target = o.get("target").map(scalar).unwrap_or_default();
            (kind, source, target, o.get("read_only") == Some(&Value::Bool(true)))
        }
        _ => {
            cx.bad(path, "must be a string or a mapping");
            return None;
        }
    };
    let name = match kind {
        "volume" if source.is_empty() => {
            cx.bad(path, "anonymous volumes are not supported: name it");
            return None;
        }
        "anonymous" => {
            cx.bad(path, "anonymous volumes are not supported: name it");
            return None;
        }
        "volume" => {
            if !named.contains(&source) {
                cx.bad(path, format!("volume {source:?} is not declared under the top-level volumes"));
            }
            if !volumes.iter().any(|v| v.name == source) {
                volumes.push(VolumeSpec {
                    name: source.clone(),
                    persistent: Some(PersistentVolume {}),
                    ..Default::default()
                });
            }
            source
        }
        "bind" => {
            if !source.starts_with('/') {
                cx.bad(path, format!("{source:?}: a host path on a device must be absolute"));
                return None;
            }
            let existing = volumes.iter().find(|v| v.host_path.as_ref().is_some_and(|h| h.path == source));
            match existing {
                Some(v) => v.name.clone(),
                None => {
                    let n = format!("host-{}", volumes.len());
                    volumes.push(VolumeSpec {
                        name: n.clone(),
                        host_path: Some(HostPathVolume { path: source.clone() }),
                        ..Default::default()
                    });
                    n
                }
            }
        }
        _ => {
            let n = format!("tmpfs-{}", volumes.len());
            volumes.push(VolumeSpec {
                name: n.clone(),
                tmpfs: Some(TmpfsVolume { size_bytes: None }),
                ..Default::default()
            });
            n
        }
    };
    Some(VolumeMount { name, mount_path: target, read_only })
}

fn healthcheck(cx: &mut Ctx, path: &str, h: &Value) -> Option<Probe> {
    if h.get("disable") == Some(&Value::Bool(true)) {
        return None;
    }
    let command = match h.get("test") {
        Some(Value::Array(a)) => {
            let parts: Vec<String> = a.iter().map(scalar).collect();
            match parts.first().map(String::as_str) {
                Some("NONE") => return None,
                Some("CMD") => parts[1..].to_vec(),
                Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), parts[1..].join(" ")],
                _ => {
                    cx.bad(&format!("{path}.test"), "must start with CMD, CMD-SHELL or NONE");
                    return None;
                }
            }
        }
        Some(Value::String(s)) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        _ => {
            cx.bad(&format!("{path}.test"), "is required");
            return None;
        }
    };
    let mut probe = Probe { exec: Some(ExecAction { command }), ..Default::default() };
    let secs = |cx: &mut Ctx, key: &str| -> Option<u32> {
        let v = h.get(key)?;
        let parsed = duration_secs(&scalar(v));
        if parsed.is_none() {
            cx.bad(&format!("{path}.{key}"), "must be a duration such as 30s or 1m30s");
        }
        parsed
    };
    if let Some(s) = secs(cx, "interval") {
        probe.period_seconds = s.max(1);
    }
    if let Some(s) = secs(cx, "timeout") {
        probe.timeout_seconds = s.max(1);
    }
    if let Some(s) = secs(cx, "start_period") {
        probe.initial_delay_seconds = s;
    }
    if let Some(r) = h.get("retries").and_then(Value::as_u64) {
        probe.failure_threshold = u32::try_from(r).unwrap_or(u32::MAX).max(1);
    }
    cx.notes.push(format!(
        "{path} becomes a readiness probe (as in Docker, a failing check marks the container unhealthy without restarting it; add a livenessProbe to restart it)"
    ));
    Some(probe)
}

fn memory(cx: &mut Ctx, path: &str, v: &Value) -> Option<Bytes> {
    let s = scalar(v);
    // Compose writes 512m, 1g, 64M; Flotilla's quantities are Ki/Mi/Gi or K/M/G.
    let normalized = match s.strip_suffix(['b', 'B']).unwrap_or(&s) {
        t if t.ends_with(['k', 'm', 'g']) => {
            format!("{}{}i", &t[..t.len() - 1], t[t.len() - 1..].to_uppercase())
        }
        t if t.ends_with(['K', 'M', 'G']) => format!("{t}i"),
        t => t.to_string(),
    };
    Bytes::parse(&normalized).map_err(|e| cx.bad(path, format!("{s:?}: {e}"))).ok()
}

/// `1m30s`, `90s`, `2m`, `500ms` (rounded up to a second), `10` (seconds).
pub fn duration_secs(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let mut total_ms: u64 = 0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                1
            }
            ('h', _) => 3_600_000,
            ('m', _) => 60_000,
            ('s', _) => 1000,
            _ => return None,
        };
        let n: f64 = num.parse().ok()?;
        total_ms += (n * unit as f64) as u64;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any {
        return None;
    }
    u32::try_from(total_ms.div_ceil(1000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    const STORE: &str = r#"
name: pos
services:
  migrate:
    image: pos:2
    command: ["/app/migrate"]
    volumes: [db:/db]
  pos:
    image: pos:2
    command: /app/serve --port "8080"
    ports: ["8080:8080"]
    environment: {MODE: prod, WORKERS: 2}
    volumes: [db:/db, /var/spool/receipts:/spool:ro]
    tmpfs: /run/pos
    devices: ["/dev/ttyUSB0:/dev/ttyS0"]
    restart: unless-stopped
    healthcheck:
      test: ["CMD", "/app/health"]
      interval: 10s
      timeout: 2s
      retries: 5
      start_period: 1m
    depends_on:
      migrate: {condition: service_completed_successfully}
    mem_limit: 256m
    cpus: "0.5"
    cap_add: [NET_RAW]
    stop_grace_period: 20s
  printer:
    image: bridge:1
    environment: ["PRINTER=usb", "POS=http://pos:8080"]
    restart: always
volumes:
  db: {}
"#;

    #[test]
    fn a_store_project_becomes_one_app() {
        let c = convert(&yaml(STORE), "pos", [("role".to_string(), "pos".to_string())].into()).unwrap();
        let s = &c.app.spec;
        assert_eq!(s.network, NetworkMode::Host, "published ports use the device's network");
        assert_eq!(s.restart_policy, RestartPolicy::Always);
        assert_eq!(s.termination_grace_period_seconds, Some(20));
        assert_eq!(s.init_containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["migrate"]);
        let pos = s.containers.iter().find(|c| c.name == "pos").unwrap();
        assert_eq!(pos.args, ["/app/serve", "--port", "8080"]);
        assert_eq!(pos.ports[0].host_port, Some(8080));
        assert_eq!(pos.env.len(), 2);
        assert_eq!(pos.devices[0].container_path, "/dev/ttyS0");
        assert_eq!(pos.resources.limits.memory, Some(Bytes(256 << 20)));
        assert_eq!(pos.resources.limits.cpu, Some(CpuMillis(500)));
        let probe = pos.readiness_probe.as_ref().unwrap();
        assert_eq!(
            (
                probe.period_seconds,
                probe.timeout_seconds,
                probe.failure_threshold,
                probe.initial_delay_seconds
            ),
            (10, 2, 5, 60)
        );
        assert_eq!(pos.volume_mounts.len(), 3);
        assert!(s.volumes.iter().any(|v| v.name == "db" && v.persistent.is_some()));
        assert!(
            s.volumes.iter().any(|v| v.host_path.as_ref().is_some_and(|h| h.path == "/var/spool/receipts"))
        );
        assert!(pos.volume_mounts.iter().any(|m| m.mount_path == "/spool" && m.read_only));
        assert!(c.notes.iter().any(|n| n.contains("readiness probe")), "{:?}", c.notes);
        assert_eq!(c.app.spec.selector.match_labels["role"], "pos");
    }

    #[test]
    fn every_unsupported_feature_is_named() {
        let doc = yaml(
            r#"
services:
  web:
    build: .
    image: web:1
    networks: [front]
    env_file: .env
    environment: [TOKEN]
    ports: ["8080:80", "9000-9010:9000-9010"]
    volumes: [./data:/data, cache:/cache]
    restart: on-failure
  db:
    image: db:1
    restart: always
    deploy: {replicas: 3}
networks: {front: {}}
secrets: {pw: {file: pw.txt}}
"#,
        );
        let problems = convert(&doc, "web", BTreeMap::new()).unwrap_err();
        for needle in [
            "services.web.build: is not supported",
            "services.web.networks",
            "services.web.env_file",
            "services.web.environment[0]",
            "services.web.ports[1]",
            "services.web.volumes[0]: \"./data\": a host path on a device must be absolute",
            "services.web.volumes[1]: volume \"cache\" is not declared",
            "services.*.restart",
            "services.db.deploy.replicas",
            "networks: is not supported",
            "secrets: is not supported",
            "8080:80: mapping a port to another needs the device bridge",
        ] {
            assert!(problems.iter().any(|p| p.contains(needle)), "nothing says {needle:?}: {problems:#?}");
        }
    }

    #[test]
    fn words_and_durations() {
        assert_eq!(
            split_words(r#"sh -c 'echo "hi there"' \x"#).unwrap(),
            ["sh", "-c", "echo \"hi there\"", "x"]
        );
        assert_eq!(split_words("a 'open"), None);
        assert_eq!(duration_secs("1m30s"), Some(90));
        assert_eq!(duration_secs("500ms"), Some(1));
        assert_eq!(duration_secs("2h"), Some(7200));
        assert_eq!(duration_secs("12"), Some(12));
        assert_eq!(duration_secs("soon"), None);
    }
}
