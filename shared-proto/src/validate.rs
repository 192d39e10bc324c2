//! Validation of what operators send, naming the offending field
//! (`spec.containers[0].image`) so that the error says what to fix. The hub runs it
//! before anything is stored; the CLI may run it before anything is sent.

use crate::resource::{API_VERSION, App, Device, Kind, NetworkMode, ObjectMeta, Site};
use crate::selector::{LabelSelector, SelectorOperator};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

mod workload;
pub use workload::{CAPABILITIES, USER_NAMESPACE_IDS, capability_name, parse_cidr, path_problem};

/// Upper bounds that keep one object small enough to replicate and push to devices.
pub const MAX_CONTAINERS_PER_APP: usize = 16;
pub const MAX_LABELS: usize = 64;
pub const MAX_ARGS: usize = 256;
pub const MAX_ENV: usize = 256;
pub const MAX_PORTS: usize = 64;
pub const MAX_STRING: usize = 4096;
pub const MIN_MEMORY_LIMIT: u64 = 4 << 20;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.containers[1].ports[0].hostPort`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All the problems found in one object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }

    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// A DNS-1123 label: 1–63 of `a-z0-9-`, starting and ending alphanumeric. Used for
/// the names of sites, devices, apps and containers.
pub fn dns_label_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > 63 {
        return Some(format!("must be at most 63 characters, got {}", s.len()));
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Some(format!("{s:?} may contain only lower-case letters, digits and '-'"));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some(format!("{s:?} must start and end with a letter or digit"));
    }
    None
}

/// What is wrong with `namespace` on an object of `kind`: apps, configs and secrets
/// name a DNS label (or nothing, for the default), the other kinds none.
pub fn namespace_problem(kind: Kind, namespace: &str) -> Option<String> {
    if namespace.is_empty() {
        return None;
    }
    if !kind.is_namespaced() {
        return Some(format!(
            "{} objects belong to the whole fleet and have no namespace (only apps, configs and secrets do)",
            kind.as_str()
        ));
    }
    dns_label_problem(namespace)
}

fn label_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Label keys are `[prefix/]name`; values are empty or label-shaped, as in Kubernetes.
pub fn label_problem(key: &str, value: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || p.split('.').any(|part| dns_label_problem(part).is_some()))
    {
        return Some(format!(
            "label key {key:?} has an invalid prefix: use a DNS subdomain such as example.com/"
        ));
    }
    if !label_part_ok(name) {
        return Some(format!(
            "label key {key:?} must be 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
        ));
    }
    if !value.is_empty() && !label_part_ok(value) {
        return Some(format!(
            "label value {value:?} must be empty or 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
        ));
    }
    None
}

/// Image references: `name[:tag]` or `name@sha256:<hex>`, name lower-case path segments.
pub fn image_reference_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > 255 {
        return Some("must be at most 255 characters".into());
    }
    let (name, tag_or_digest) = if let Some((n, d)) = s.split_once('@') {
        let hex = d.strip_prefix("sha256:");
        if !hex.is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        }) {
            return Some(format!("{s:?}: a digest must be sha256: followed by 64 lower-case hex digits"));
        }
        (n, None)
    } else {
        match s.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (s, None),
        }
    };
    let segment_ok = |seg: &str| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
            && seg.as_bytes()[0].is_ascii_alphanumeric()
    };
    // The first segment may be a registry host with a port (`registry.local:5000/x`).
    let mut segs = name.split('/');
    let first_ok = segs.next().is_some_and(|first| {
        segment_ok(first)
            || first.split_once(':').is_some_and(|(h, p)| segment_ok(h) && p.parse::<u16>().is_ok())
    });
    if !first_ok || !segs.all(segment_ok) {
        return Some(format!(
            "{s:?} is not a valid image reference: use lower-case name[:tag], e.g. demo-httpd:1.0"
        ));
    }
    if let Some(t) = tag_or_digest
        && (t.is_empty()
            || t.len() > 128
            || !t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
    {
        return Some(format!("{s:?}: a tag must be 1-128 letters, digits, '_', '.' or '-'"));
    }
    None
}

fn check_header(errs: &mut FieldErrors, api_version: &str, kind: &str, expected: Kind) {
    if api_version != API_VERSION {
        errs.push("apiVersion", format!("must be {API_VERSION:?}, got {api_version:?}"));
    }
    if kind != expected.as_str() {
        errs.push("kind", format!("must be {:?}, got {kind:?}", expected.as_str()));
    }
}

fn check_meta(errs: &mut FieldErrors, meta: &ObjectMeta, kind: Kind) {
    let problem = match kind {
        Kind::Image => image_reference_problem(&meta.name),
        _ => dns_label_problem(&meta.name),
    };
    if let Some(p) = problem {
        errs.push("metadata.name", p);
    }
    if let Some(p) = namespace_problem(kind, &meta.namespace) {
        errs.push("metadata.namespace", p);
    }
    check_labels(errs, "metadata.labels", &meta.labels);
    if meta.annotations.len() > MAX_LABELS {
        errs.push("metadata.annotations", format!("at most {MAX_LABELS} annotations"));
    }
    for (k, v) in &meta.annotations {
        if k.is_empty() || k.len() > 253 {
            errs.push(format!("metadata.annotations[{k:?}]"), "key must be 1-253 characters");
        }
        if v.len() > MAX_STRING {
            errs.push(
                format!("metadata.annotations[{k:?}]"),
                format!("value must be at most {MAX_STRING} bytes"),
            );
        }
    }
}

fn check_labels(errs: &mut FieldErrors, field: &str, labels: &BTreeMap<String, String>) {
    if labels.len() > MAX_LABELS {
        errs.push(field, format!("at most {MAX_LABELS} labels"));
    }
    for (k, v) in labels {
        if let Some(p) = label_problem(k, v) {
            errs.push(format!("{field}[{k:?}]"), p);
        }
    }
}

fn check_selector(errs: &mut FieldErrors, field: &str, sel: &LabelSelector) {
    check_labels(errs, &format!("{field}.matchLabels"), &sel.match_labels);
    for (i, r) in sel.match_expressions.iter().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if let Some(p) = label_problem(&r.key, "") {
            errs.push(format!("{f}.key"), p);
        }
        match r.operator {
            SelectorOperator::In | SelectorOperator::NotIn if r.values.is_empty() => {
                errs.push(format!("{f}.values"), "must not be empty for In and NotIn");
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !r.values.is_empty() => {
                errs.push(format!("{f}.values"), "must be empty for Exists and DoesNotExist");
            }
            _ => {}
        }
        for (j, v) in r.values.iter().enumerate() {
            if let Some(p) = label_problem("k", v) {
                errs.push(format!("{f}.values[{j}]"), p);
            }
        }
    }
}

fn check_string_list(errs: &mut FieldErrors, field: &str, list: &[String]) {
    if list.len() > MAX_ARGS {
        errs.push(field, format!("at most {MAX_ARGS} entries"));
    }
    for (i, s) in list.iter().enumerate() {
        if s.len() > MAX_STRING {
            errs.push(format!("{field}[{i}]"), format!("must be at most {MAX_STRING} bytes"));
        }
        if s.contains('\0') {
            errs.push(format!("{field}[{i}]"), "must not contain NUL bytes");
        }
    }
}

pub fn validate_site(site: &Site) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    check_header(&mut errs, &site.api_version, &site.kind, Kind::Site);
    check_meta(&mut errs, &site.metadata, Kind::Site);
    if site.spec.display_name.len() > 256 {
        errs.push("spec.displayName", "must be at most 256 bytes");
    }
    if site.spec.location.len() > 256 {
        errs.push("spec.location", "must be at most 256 bytes");
    }
    errs.into_result()
}

/// Most keys a `Config` or a `Secret` holds.
pub const MAX_CONFIG_KEYS: usize = 64;
/// Most bytes of data one `Config` or `Secret` holds (as in Kubernetes, under a MiB):
/// every device that uses it receives all of it with its manifest.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// Why `key` cannot name a value of a `Config` or a `Secret`: it becomes a file name
/// when mounted, so letters, digits, `-`, `_` and `.` only, and not `.` or `..`.
pub fn config_key_problem(key: &str) -> Option<String> {
    if key.is_empty() || key.len() > 253 {
        return Some("must be 1 to 253 characters".into());
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Some(format!("{key:?} may contain only letters, digits, '-', '_' and '.'"));
    }
    if key == "." || key == ".." {
        return Some("must not be . or ..".into());
    }
    None
}

/// A `Config` or a `Secret` (same shape; `kind` says which).
pub fn validate_config(
    api_version: &str,
    kind_field: &str,
    kind: Kind,
    metadata: &crate::ObjectMeta,
    spec: &crate::ConfigSpec,
) -> Result<(), FieldErrors> {
    use base64::Engine;
    let mut errs = FieldErrors::default();
    check_header(&mut errs, api_version, kind_field, kind);
    check_meta(&mut errs, metadata, kind);
    if spec.data.len() + spec.binary_data.len() > MAX_CONFIG_KEYS {
        errs.push("spec.data", format!("at most {MAX_CONFIG_KEYS} keys in data and binaryData together"));
    }
    let mut total = 0usize;
    for (k, v) in &spec.data {
        if let Some(p) = config_key_problem(k) {
            errs.push(format!("spec.data.{k}"), p);
        }
        total = total.saturating_add(v.len());
    }
    for (k, v) in &spec.binary_data {
        if let Some(p) = config_key_problem(k) {
            errs.push(format!("spec.binaryData.{k}"), p);
        }
        if spec.data.contains_key(k) {
            errs.push(format!("spec.binaryData.{k}"), "is also a key of data");
        }
        match base64::engine::general_purpose::STANDARD.decode(v) {
            Ok(b) => total = total.saturating_add(b.len()),
            Err(e) => errs.push(format!("spec.binaryData.{k}"), format!("is not base64: {e}")),
        }
    }
    if total > MAX_CONFIG_BYTES {
        errs.push("spec", format!("holds {total} bytes of data, over the {MAX_CONFIG_BYTES}-byte limit"));
    }
    errs.into_result()
}

pub fn validate_device(device: &Device) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    check_header(&mut errs, &device.api_version, &device.kind, Kind::Device);
    check_meta(&mut errs, &device.metadata, Kind::Device);
    if !device.spec.site.is_empty()
        && let Some(p) = dns_label_problem(&device.spec.site)
    {
        errs.push("spec.site", p);
    }
    if device.spec.taints.len() > MAX_PLACEMENT_RULES {
        errs.push("spec.taints", format!("at most {MAX_PLACEMENT_RULES} taints"));
    }
    for (i, t) in device.spec.taints.iter().enumerate() {
        if let Some(p) = label_problem(&t.key, &t.value) {
            errs.push(format!("spec.taints[{i}]"), p);
        }
    }
    errs.into_result()
}

/// Most taints, tolerations or affinity rules one object may carry.
pub const MAX_PLACEMENT_RULES: usize = 32;

fn check_placement_rules(errs: &mut FieldErrors, app: &App) {
    let p = &app.spec.placement;
    for (field, n) in [
        ("spec.placement.tolerations", p.tolerations.len()),
        ("spec.placement.affinity", p.affinity.len()),
        ("spec.placement.antiAffinity", p.anti_affinity.len()),
    ] {
        if n > MAX_PLACEMENT_RULES {
            errs.push(field, format!("at most {MAX_PLACEMENT_RULES} entries"));
        }
    }
    for (i, t) in p.tolerations.iter().enumerate() {
        let f = format!("spec.placement.tolerations[{i}]");
        match t.operator {
            crate::TolerationOperator::Exists if !t.value.is_empty() => {
                errs.push(format!("{f}.value"), "must be empty with operator Exists");
            }
            crate::TolerationOperator::Equal if t.key.is_empty() => {
                errs.push(
                    format!("{f}.key"),
                    "must be set with operator Equal (use Exists to tolerate every taint)",
                );
            }
            _ => {}
        }
        if (!t.key.is_empty() || !t.value.is_empty())
            && let Some(problem) = label_problem(if t.key.is_empty() { "any" } else { &t.key }, &t.value)
        {
            errs.push(f, problem);
        }
    }
    for (field, rules) in
        [("spec.placement.affinity", &p.affinity), ("spec.placement.antiAffinity", &p.anti_affinity)]
    {
        for (i, r) in rules.iter().enumerate() {
            if let Some(problem) = dns_label_problem(&r.app) {
                errs.push(format!("{field}[{i}].app"), problem);
            }
        }
    }
    for (i, r) in p.affinity.iter().enumerate() {
        if r.app == app.metadata.name {
            errs.push(format!("spec.placement.affinity[{i}].app"), "an app cannot need itself");
        }
        if p.anti_affinity.iter().any(|a| a.app == r.app && a.scope == r.scope) {
            errs.push(
                format!("spec.placement.affinity[{i}]"),
                "the same app and scope is in antiAffinity too",
            );
        }
    }
}

pub fn validate_app(app: &App) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    check_header(&mut errs, &app.api_version, &app.kind, Kind::App);
    check_meta(&mut errs, &app.metadata, Kind::App);
    let spec = &app.spec;
    check_selector(&mut errs, "spec.selector", &spec.selector);
    for (i, site) in spec.placement.sites.iter().enumerate() {
        if let Some(p) = dns_label_problem(site) {
            errs.push(format!("spec.placement.sites[{i}]"), p);
        }
    }
    if spec.placement.max_per_site == Some(0) {
        errs.push("spec.placement.maxPerSite", "must be at least 1 (leave it unset for no limit)");
    }
    check_placement_rules(&mut errs, app);
    if spec.containers.is_empty() {
        errs.push("spec.containers", "must list at least one container");
    }
    if spec.containers.len() > MAX_CONTAINERS_PER_APP {
        errs.push("spec.containers", format!("at most {MAX_CONTAINERS_PER_APP} containers"));
    }
    if spec.init_containers.len() > MAX_CONTAINERS_PER_APP {
        errs.push("spec.initContainers", format!("at most {MAX_CONTAINERS_PER_APP} init containers"));
    }
    let mut names = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let volumes = workload::check_volumes(&mut errs, spec);
    for (i, c) in spec.containers.iter().enumerate() {
        check_container(&mut errs, &format!("spec.containers[{i}]"), c, spec, &mut names, &mut host_ports);
        workload::check_container_extras(&mut errs, &format!("spec.containers[{i}]"), c, &volumes, false);
    }
    for (i, c) in spec.init_containers.iter().enumerate() {
        let f = format!("spec.initContainers[{i}]");
        check_container(&mut errs, &f, c, spec, &mut names, &mut host_ports);
        workload::check_container_extras(&mut errs, &f, c, &volumes, true);
    }
    workload::check_app_extras(&mut errs, spec);
    errs.into_result()
}

fn check_container<'a>(
    errs: &mut FieldErrors,
    f: &str,
    c: &'a crate::resource::ContainerSpec,
    spec: &crate::resource::AppSpec,
    names: &mut BTreeSet<&'a str>,
    host_ports: &mut BTreeSet<(u16, crate::resource::Protocol)>,
) {
    if let Some(p) = dns_label_problem(&c.name) {
        errs.push(format!("{f}.name"), p);
    } else if !names.insert(c.name.as_str()) {
        errs.push(format!("{f}.name"), format!("{:?} is used by another container", c.name));
    }
    if let Some(p) = image_reference_problem(&c.image) {
        errs.push(format!("{f}.image"), p);
    }
    check_string_list(errs, &format!("{f}.command"), &c.command);
    check_string_list(errs, &format!("{f}.args"), &c.args);
    if c.working_dir.len() > MAX_STRING || (!c.working_dir.is_empty() && !c.working_dir.starts_with('/')) {
        errs.push(format!("{f}.workingDir"), "must be an absolute path");
    }
    if c.env.len() > MAX_ENV {
        errs.push(format!("{f}.env"), format!("at most {MAX_ENV} variables"));
    }
    let mut env_names = BTreeSet::new();
    for (j, e) in c.env.iter().enumerate() {
        let ef = format!("{f}.env[{j}]");
        if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') || e.name.len() > 256 {
            errs.push(format!("{ef}.name"), "must be 1-256 characters without '=' or NUL");
        } else if !env_names.insert(e.name.as_str()) {
            errs.push(format!("{ef}.name"), format!("{:?} is set twice", e.name));
        }
        if e.value.len() > MAX_STRING || e.value.contains('\0') {
            errs.push(format!("{ef}.value"), format!("must be at most {MAX_STRING} bytes without NUL"));
        }
    }
    if c.ports.len() > MAX_PORTS {
        errs.push(format!("{f}.ports"), format!("at most {MAX_PORTS} ports"));
    }
    for (j, p) in c.ports.iter().enumerate() {
        let pf = format!("{f}.ports[{j}]");
        if p.container_port == 0 {
            errs.push(format!("{pf}.containerPort"), "must be between 1 and 65535");
        }
        if p.host_port == Some(0) {
            errs.push(format!("{pf}.hostPort"), "must be between 1 and 65535");
        }
        if spec.network == NetworkMode::Host
            && let Some(h) = p.host_port
            && h != p.container_port
        {
            errs.push(
                format!("{pf}.hostPort"),
                format!(
                    "with network Host the container binds the device's port itself, so hostPort must equal containerPort ({}) or be left out",
                    p.container_port
                ),
            );
        }
        if spec.network == NetworkMode::None && p.host_port.is_some() {
            errs.push(
                format!("{pf}.hostPort"),
                "network None has no host ports: use network Host to publish",
            );
        }
        if p.host_port.is_some() || spec.network == NetworkMode::Host {
            let hp = (p.effective_host_port(), p.protocol);
            if !host_ports.insert(hp) {
                errs.push(format!("{pf}.hostPort"), format!("port {} is published twice in this app", hp.0));
            }
        }
    }
    let lim = &c.resources.limits;
    let req = &c.resources.requests;
    for (field, cpu, memory) in [("limits", lim.cpu, lim.memory), ("requests", req.cpu, req.memory)] {
        if cpu.is_some_and(|c| c.0 > crate::quantity::MAX_CPU_MILLIS) {
            errs.push(format!("{f}.resources.{field}.cpu"), "must be at most 999999999.999 cores");
        }
        if memory.is_some_and(|m| m.0 > crate::quantity::MAX_BYTES) {
            errs.push(format!("{f}.resources.{field}.memory"), "must be under 10^18 bytes");
        }
    }
    if lim.cpu == Some(crate::CpuMillis(0)) {
        errs.push(format!("{f}.resources.limits.cpu"), "must be more than 0 (leave it out for no limit)");
    }
    if let Some(m) = lim.memory
        && m.0 < MIN_MEMORY_LIMIT
    {
        errs.push(format!("{f}.resources.limits.memory"), "must be at least 4Mi");
    }
    if lim.pids == Some(0) {
        errs.push(format!("{f}.resources.limits.pids"), "must be at least 1");
    }
    if let (Some(r), Some(l)) = (req.cpu, lim.cpu)
        && r > l
    {
        errs.push(format!("{f}.resources.requests.cpu"), format!("{r} exceeds the limit {l}"));
    }
    if let (Some(r), Some(l)) = (req.memory, lim.memory)
        && r > l
    {
        errs.push(format!("{f}.resources.requests.memory"), format!("{r} exceeds the limit {l}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{AppSpec, ContainerSpec, PortSpec};

    fn app() -> App {
        App::new(
            ObjectMeta::named("web"),
            AppSpec {
                containers: vec![ContainerSpec {
                    name: "httpd".into(),
                    image: "demo-httpd:1.0".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    fn fields(r: Result<(), FieldErrors>) -> Vec<String> {
        r.err().map(|e| e.0.into_iter().map(|e| e.field).collect()).unwrap_or_default()
    }

    #[test]
    fn a_minimal_app_is_valid() {
        assert_eq!(validate_app(&app()), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let mut a = app();
        a.spec.containers[0].image = String::new();
        a.spec.containers.push(ContainerSpec {
            name: "httpd".into(),
            image: "x".into(),
            ..Default::default()
        });
        a.spec.containers[1].ports.push(PortSpec {
            container_port: 80,
            host_port: Some(8080),
            ..Default::default()
        });
        a.metadata.name = "Web".into();
        assert_eq!(
            fields(validate_app(&a)),
            vec![
                "metadata.name",
                "spec.containers[0].image",
                "spec.containers[1].name",
                "spec.containers[1].ports[0].hostPort"
            ]
        );
    }

    #[test]
    fn placement_rules_are_checked_by_field() {
        use crate::{AffinityScope, AppAffinity, Toleration, TolerationOperator};
        let mut a = app();
        a.spec.placement.tolerations = vec![
            Toleration { operator: TolerationOperator::Exists, value: "x".into(), ..Default::default() },
            Toleration::default(),
        ];
        a.spec.placement.affinity =
            vec![AppAffinity { app: a.metadata.name.clone(), scope: AffinityScope::Device }];
        a.spec.placement.anti_affinity =
            vec![AppAffinity { app: "Bad_Name".into(), scope: AffinityScope::Site }];
        let errs = validate_app(&a).unwrap_err().to_string();
        for field in [
            "spec.placement.tolerations[0].value",
            "spec.placement.tolerations[1].key",
            "spec.placement.affinity[0].app",
            "spec.placement.antiAffinity[0].app",
        ] {
            assert!(errs.contains(field), "{field} missing from {errs}");
        }
        let mut d = crate::Device::new(crate::ObjectMeta::named("pi"), Default::default());
        d.spec.taints = vec![crate::Taint { key: "bad key".into(), ..Default::default() }];
        assert!(validate_device(&d).unwrap_err().to_string().contains("spec.taints[0]"));
    }

    #[test]
    fn wrong_header_is_reported() {
        let mut a = app();
        a.api_version = "v1".into();
        a.kind = "Site".into();
        assert_eq!(fields(validate_app(&a)), vec!["apiVersion", "kind"]);
    }

    #[test]
    fn names_labels_and_references() {
        assert!(dns_label_problem("store-12").is_none());
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(dns_label_problem(bad).is_some(), "{bad:?}");
        }
        assert!(label_problem("example.com/role", "pos").is_none());
        assert!(label_problem("role", "").is_none());
        assert!(label_problem("role", "-x").is_some());
        assert!(label_problem("/role", "x").is_some());
        for ok in ["demo-httpd", "demo-httpd:1.0", "library/busybox:1.36", "registry.local:5000/a/b:c"] {
            assert!(image_reference_problem(ok).is_none(), "{ok:?}");
        }
        let digest = format!("demo@sha256:{}", "a".repeat(64));
        assert!(image_reference_problem(&digest).is_none());
        for bad in ["", "Demo", "demo:", "demo@sha256:xyz", "demo:t@g"] {
            assert!(image_reference_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn namespaces_are_dns_labels_and_only_for_namespaced_kinds() {
        assert!(namespace_problem(Kind::App, "").is_none());
        assert!(namespace_problem(Kind::Secret, "pos").is_none());
        assert!(namespace_problem(Kind::Config, "Pos").is_some());
        assert!(namespace_problem(Kind::App, "a.b").is_some(), "a dot would make qualified names ambiguous");
        assert!(namespace_problem(Kind::Site, "").is_none());
        assert!(namespace_problem(Kind::Device, "pos").unwrap().contains("no namespace"));
        // Qualified names: the default namespace keeps the bare name.
        assert_eq!(crate::qualified_name("default", "web"), "web");
        assert_eq!(crate::qualified_name("", "web"), "web");
        assert_eq!(crate::qualified_name("pos", "web"), "web.pos");
        assert_eq!(crate::split_qualified_name("web.pos"), ("pos", "web"));
        assert_eq!(crate::split_qualified_name("web"), ("default", "web"));
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use crate::{Config, ConfigSpec, Secret};

    #[test]
    fn configs_and_secrets_are_bounded_and_named() {
        let mut spec = ConfigSpec::default();
        spec.data.insert("app.toml".into(), "port = 80".into());
        spec.binary_data.insert("logo.png".into(), "iVBORw0KGgo=".into());
        let c = Config::new(crate::ObjectMeta::named("pos"), spec.clone());
        assert!(validate_config(&c.api_version, &c.kind, Kind::Config, &c.metadata, &c.spec).is_ok());
        assert_eq!(spec.entries().unwrap()[1].1, b"\x89PNG\r\n\x1a\n");
        let mut bad = spec.clone();
        bad.data.insert("../etc".into(), String::new());
        bad.binary_data.insert("app.toml".into(), "!!".into());
        bad.data.insert("big".into(), "x".repeat(MAX_CONFIG_BYTES));
        let s = Secret::new(crate::ObjectMeta::named("pos"), bad);
        let errs = validate_config(&s.api_version, &s.kind, Kind::Secret, &s.metadata, &s.spec).unwrap_err();
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"spec.data.../etc"), "{fields:?}");
        assert!(fields.contains(&"spec.binaryData.app.toml"), "{fields:?}");
        assert!(fields.contains(&"spec"), "{fields:?}");
        // A Config's body under the Secret kind is refused.
        assert!(validate_config(&c.api_version, &c.kind, Kind::Secret, &c.metadata, &c.spec).is_err());
    }
}
