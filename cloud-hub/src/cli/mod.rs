//! The operator CLI: `flotilla apply | get | describe | delete | token | api-token |
//! image | backup`. A thin client of the HTTPS API; everything it can do, the API can do
//! (but `backup restore`, which works offline on a data directory).

pub mod attach;
pub mod backup;
pub mod ca;
pub mod client;
pub mod cluster;
pub mod compose;
pub mod config;
pub mod output;
pub mod watch;

use anyhow::{Context, bail};
use client::{HubArgs, HubClient};
use output::{Format, age, labels, n, s, table};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared_proto::Kind;
use shared_proto::clock::Clock;
use std::path::{Path, PathBuf};

/// Largest manifest file `apply -f` reads.
const MAX_MANIFEST_FILE: u64 = 4 << 20;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an enrolment token for devices; prints it once.
    Create {
        /// How long the token stays valid (e.g. 1h, 24h, 30d).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// How many devices may enrol with it; unlimited when left out.
        #[arg(long)]
        max_uses: Option<u32>,
        /// Label every device enrolled with this token gets (repeatable): key=value.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// A label devices may set themselves (repeatable): `key` for any value,
        /// `key=value` for that value, `*` for any label. Default: none but the token's own.
        #[arg(long = "allow-label", value_name = "KEY[=VALUE]")]
        allow_labels: Vec<String>,
        /// Site every device enrolled with this token joins.
        #[arg(long, default_value = "")]
        site: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Print only the token.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List enrolment tokens (never their secrets).
    List,
    /// Revoke an enrolment token.
    Revoke { id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Retire a device for good: its connections close, its certificates open nothing
    /// more and nothing is placed on it. `flotilla delete device NAME` then frees the name.
    Decommission { name: String },
    /// Let a quarantined device back in (it came back with an expired certificate):
    /// its next renewal request gets a certificate.
    Approve { name: String },
    /// Refuse a quarantined device for good: it is decommissioned.
    Reject { name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum ApiTokenCommand {
    /// Create an API token; prints it once.
    Create {
        #[arg(long, default_value = "viewer", value_parser = ["viewer", "operator", "admin"])]
        role: String,
        #[arg(long, default_value = "")]
        description: String,
        /// How long the token is valid (e.g. 30d; at most 1825d).
        #[arg(long, default_value = "90d")]
        ttl: String,
        /// Limit the token to this site (repeatable); default: every site.
        #[arg(long = "site")]
        sites: Vec<String>,
        /// Limit the token to the apps, configs and secrets of these namespaces
        /// (comma-separated or repeated); default: every namespace. Such a token
        /// changes no site, device, image or enrolment token.
        #[arg(long = "namespaces", value_delimiter = ',')]
        namespaces: Vec<String>,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image-layout archive (tar or tar.gz) into the hub.
    Import {
        file: PathBuf,
        /// Reference to import as (default: the archive's own ref name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List imported images.
    List,
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

fn kind_arg(s: &str) -> anyhow::Result<Kind> {
    Kind::parse(s).with_context(|| format!("unknown kind {s:?}: use sites, devices, apps or images"))
}

/// Reads `-f` input: a file, a directory of .yaml/.yml/.json files, or `-` for stdin.
fn read_manifests(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    use std::io::Read;
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().take(MAX_MANIFEST_FILE + 1).read_to_string(&mut text)?;
        if text.len() as u64 > MAX_MANIFEST_FILE {
            bail!("stdin: more than {MAX_MANIFEST_FILE} bytes");
        }
        return Ok(vec![("stdin".into(), text)]);
    }
    let mut files = Vec::new();
    if path.is_dir() {
        for e in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
            let p = e?.path();
            if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut out = Vec::new();
    for f in files {
        let meta = std::fs::metadata(&f).with_context(|| format!("reading {}", f.display()))?;
        if meta.len() > MAX_MANIFEST_FILE {
            bail!("{}: larger than {MAX_MANIFEST_FILE} bytes", f.display());
        }
        out.push((
            f.display().to_string(),
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
        ));
    }
    Ok(out)
}

/// Splits YAML (or JSON) text into documents.
pub fn parse_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).with_context(|| format!("document {}: not valid YAML", i + 1))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

#[derive(clap::Subcommand)]
pub enum ConvertCommand {
    /// A docker-compose.yml into one App (its services become the App's containers).
    Compose {
        file: std::path::PathBuf,
        /// The App's name; default: the file's `name:`, else its directory's name.
        #[arg(long)]
        name: Option<String>,
        /// Devices to run on, `key=value` (repeatable); default: the file's
        /// `x-flotilla.selector`, else every device.
        #[arg(long = "selector", value_parser = parse_label)]
        selector: Vec<(String, String)>,
    },
}

/// The App a Compose document becomes, named and placed from `x-flotilla` (or the
/// arguments); notes go to stderr.
fn compose_app(
    doc: &Value,
    source: &Path,
    name: Option<String>,
    selector: Vec<(String, String)>,
    require_selector: bool,
) -> anyhow::Result<Value> {
    let ext = &doc["x-flotilla"];
    let name = name
        .or_else(|| ext["name"].as_str().map(str::to_string))
        .or_else(|| doc["name"].as_str().map(str::to_string))
        .or_else(|| {
            std::path::absolute(source).ok()?.parent()?.file_name()?.to_str().map(|n| n.to_ascii_lowercase())
        })
        .unwrap_or_else(|| "compose".into());
    let mut labels: std::collections::BTreeMap<String, String> = selector.into_iter().collect();
    if labels.is_empty() {
        for (k, v) in ext["selector"].as_object().into_iter().flatten() {
            labels.insert(k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
        }
    }
    if require_selector && labels.is_empty() {
        anyhow::bail!(
            "a Compose file applied to a fleet must say where it runs: add `x-flotilla: {{selector: {{role: pos}}}}` (or convert it with `flotilla convert compose --selector` and apply the result)"
        );
    }
    match compose::convert(doc, &name, labels) {
        Ok(c) => {
            for n in &c.notes {
                eprintln!("note: {n}");
            }
            Ok(serde_json::to_value(&c.app)?)
        }
        Err(problems) => {
            anyhow::bail!("cannot convert {} :\n  {}", source.display(), problems.join("\n  "))
        }
    }
}

pub fn convert(command: &ConvertCommand) -> anyhow::Result<()> {
    let ConvertCommand::Compose { file, name, selector } = command;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let doc: Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{}: not valid YAML", file.display()))?;
    let app = compose_app(&doc, file, name.clone(), selector.clone(), false)?;
    let mut out = serde_json::Map::new();
    // The fields an operator writes, not the status the hub fills in.
    for key in ["apiVersion", "kind", "metadata", "spec"] {
        out.insert(key.into(), app[key].clone());
    }
    out["metadata"] = serde_json::json!({ "name": app["metadata"]["name"] });
    print!("{}", serde_yaml_ng::to_string(&Value::Object(out))?);
    Ok(())
}

pub async fn apply(args: &HubArgs, file: &Path) -> anyhow::Result<()> {
    let client = HubClient::connect(args)?;
    let mut failed = 0;
    for (source, text) in read_manifests(file)? {
        for (i, doc) in parse_documents(&text).with_context(|| source.clone())?.into_iter().enumerate() {
            let where_ = format!("{source} document {}", i + 1);
            let doc = if compose::is_compose(&doc) {
                match compose_app(&doc, Path::new(&source), None, vec![], true) {
                    Ok(app) => app,
                    Err(e) => {
                        eprintln!("error: {where_}: {e:#}");
                        failed += 1;
                        continue;
                    }
                }
            } else {
                doc
            };
            let kind_str = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
            let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == kind_str) else {
                eprintln!(
                    "error: {where_}: kind: must be one of Site, Device, App, Config, Secret, got {kind_str:?}"
                );
                failed += 1;
                continue;
            };
            let name = s(&doc, &["metadata", "name"]).to_string();
            if name.is_empty() {
                eprintln!("error: {where_}: metadata.name: must not be empty");
                failed += 1;
                continue;
            }
            // The document's namespace, else -n's, else the hub's default.
            let namespace = match s(&doc, &["metadata", "namespace"]) {
                "" => args.namespace.clone().unwrap_or_default(),
                ns => ns.to_string(),
            };
            let path = match namespace.as_str() {
                "" => format!("/api/v1/{}/{name}", kind.plural()),
                ns => format!("/api/v1/{}/{name}?namespace={ns}", kind.plural()),
            };
            let body = serde_json::to_vec(&doc)?;
            match client.request_with_headers(Method::PUT, &path, Some(body.into()), "application/json").await
            {
                Ok((status, headers, _)) => {
                    let result = headers
                        .get(crate::api::objects::APPLY_RESULT)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or(if status == StatusCode::CREATED { "created" } else { "configured" });
                    println!("{}/{name} {result}", kind.as_str().to_lowercase());
                }
                Err(e) => {
                    eprintln!("error: {where_} ({}/{name}): {e}", kind.as_str().to_lowercase());
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} object(s) not applied");
    }
    Ok(())
}

fn now() -> shared_proto::Timestamp {
    shared_proto::clock::SystemClock.now()
}

pub(crate) fn rows_for(kind: Kind, items: &[Value], wide: bool) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let now = now();
    match kind {
        Kind::Device => {
            let mut h = vec!["NAME", "SITE", "PHASE", "ARCH", "AGENT", "CONTAINERS", "LAST SEEN"];
            if wide {
                h.push("LABELS");
            }
            let rows = items
                .iter()
                .map(|d| {
                    let containers = d["status"]["containers"].as_array().cloned().unwrap_or_default();
                    let running = containers.iter().filter(|c| c["phase"] == "Running").count();
                    let mut r = vec![
                        s(d, &["metadata", "name"]).to_string(),
                        s(d, &["spec", "site"]).to_string(),
                        s(d, &["status", "phase"]).to_string(),
                        s(d, &["status", "arch"]).to_string(),
                        s(d, &["status", "agentVersion"]).to_string(),
                        format!("{running}/{}", containers.len()),
                        match s(d, &["status", "lastSeenAt"]) {
                            "" => "-".into(),
                            t => format!("{} ago", age(t, now)),
                        },
                    ];
                    if wide {
                        r.push(labels(d));
                    }
                    r
                })
                .collect();
            (h, rows)
        }
        Kind::App => {
            let h = vec!["NAME", "PHASE", "RUNNING", "GENERATION", "AGE", "MESSAGE"];
            let rows = items
                .iter()
                .map(|a| {
                    vec![
                        s(a, &["metadata", "name"]).to_string(),
                        s(a, &["status", "phase"]).to_string(),
                        format!(
                            "{}/{}",
                            n(a, &["status", "runningDevices"]),
                            n(a, &["status", "desiredDevices"])
                        ),
                        n(a, &["metadata", "generation"]).to_string(),
                        age(s(a, &["metadata", "createdAt"]), now),
                        s(a, &["status", "message"]).to_string(),
                    ]
                })
                .collect();
            (h, rows)
        }
        Kind::Site => {
            let h = vec!["NAME", "DISPLAY NAME", "DEVICES", "ONLINE"];
            let rows = items
                .iter()
                .map(|x| {
                    vec![
                        s(x, &["metadata", "name"]).to_string(),
                        s(x, &["spec", "displayName"]).to_string(),
                        n(x, &["status", "devices"]).to_string(),
                        n(x, &["status", "onlineDevices"]).to_string(),
                    ]
                })
                .collect();
            (h, rows)
        }
        Kind::Image => {
            let h = vec!["NAME", "PLATFORMS", "SIZE", "DIGEST", "IMPORTED"];
            let rows = items
                .iter()
                .map(|i| {
                    let platforms = i["spec"]["platforms"].as_array().cloned().unwrap_or_default();
                    let size: u64 = platforms.iter().map(|p| p["size"].as_u64().unwrap_or(0)).sum();
                    vec![
                        s(i, &["metadata", "name"]).to_string(),
                        platforms
                            .iter()
                            .map(|p| {
                                format!(
                                    "{}/{}",
                                    p["os"].as_str().unwrap_or(""),
                                    p["architecture"].as_str().unwrap_or("")
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(","),
                        shared_proto::Bytes(size).to_string(),
                        s(i, &["spec", "digest"]).chars().take(19).collect(),
                        age(s(i, &["status", "importedAt"]), now),
                    ]
                })
                .collect();
            (h, rows)
        }
        Kind::Config | Kind::Secret => {
            let h = vec!["NAME", "KEYS", "GENERATION", "AGE"];
            let rows = items
                .iter()
                .map(|c| {
                    let keys = c["status"]["keys"].as_array().cloned().unwrap_or_default();
                    vec![
                        s(c, &["metadata", "name"]).to_string(),
                        keys.iter().filter_map(|k| k.as_str()).collect::<Vec<_>>().join(","),
                        n(c, &["metadata", "generation"]).to_string(),
                        age(s(c, &["metadata", "createdAt"]), now),
                    ]
                })
                .collect();
            (h, rows)
        }
    }
}

/// `flotilla get`: one object, or the filtered list (every page), or with `watch` the list
/// and then its changes as they come.
pub async fn get(
    args: &HubArgs,
    kind: &str,
    name: Option<&str>,
    format: Format,
    filters: &watch::Filters,
    follow: bool,
) -> anyhow::Result<()> {
    let kind = kind_arg(kind)?;
    let client = HubClient::connect(args)?;
    let mut filters = filters.clone();
    if !kind.is_namespaced() {
        filters.namespace = None;
    }
    let all_namespaces = kind.is_namespaced() && filters.namespace.is_none();
    let filters = &filters;
    if follow {
        if name.is_some() {
            bail!(
                "-w follows a list: leave out the name and select with -l or --field-selector metadata.name=NAME"
            );
        }
        return watch::get_and_watch(&client, kind, filters, format).await;
    }
    let (value, items) = match name {
        Some(n) => {
            let v =
                client.get(&format!("/api/v1/{}/{n}{}", kind.plural(), args.namespace_query(kind))).await?;
            (v.clone(), vec![v])
        }
        None => {
            let (revision, items) = watch::list_all(&client, kind, filters).await?;
            let v = json!({
                "apiVersion": shared_proto::API_VERSION,
                "kind": format!("{}List", kind.as_str()),
                "metadata": { "revision": revision },
                "revision": revision,
                "items": items,
            });
            (v, items)
        }
    };
    match format {
        Format::Json | Format::Yaml => output::print_value(&value, format),
        Format::Table | Format::Wide => {
            if items.is_empty() {
                eprintln!("no {} found", kind.plural());
                return Ok(());
            }
            let (mut h, mut rows) = rows_for(kind, &items, format == Format::Wide);
            if all_namespaces {
                h.insert(0, "NAMESPACE");
                for (row, item) in rows.iter_mut().zip(&items) {
                    row.insert(0, s(item, &["metadata", "namespace"]).to_string());
                }
            }
            print!("{}", table(&h, &rows));
            Ok(())
        }
    }
}

/// What each container of an app gives up of the default sandbox, one line each:
/// privilege, capabilities, user, host paths and devices. Nothing for an app that
/// keeps it whole.
pub fn sandbox_lines(spec: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let host_paths: Vec<(String, String)> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?.to_string(), v["hostPath"]["path"].as_str()?.to_string())))
        .collect();
    if spec["userNamespace"] == true {
        // Gains rather than gives up, but it is what an operator reading this looks for.
        out.push("user namespace: root in every container is an unprivileged user on the device".to_string());
    }
    let lists = ["initContainers", "containers"];
    for c in lists.iter().flat_map(|l| spec[*l].as_array().into_iter().flatten()) {
        let name = c["name"].as_str().unwrap_or("?");
        let sec = &c["security"];
        let mut given = Vec::new();
        if sec["privileged"] == true {
            given.push(
                "PRIVILEGED (every capability the agent holds, every device, no masked paths, writable /sys)"
                    .to_string(),
            );
            given.push("seccomp: unconfined".to_string());
        }
        let caps = |k: &str| -> Vec<String> {
            sec[k].as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_string)).collect()
        };
        if !caps("addCapabilities").is_empty() {
            given.push(format!("adds {}", caps("addCapabilities").join(", ")));
        }
        if !caps("dropCapabilities").is_empty() {
            given.push(format!("drops {}", caps("dropCapabilities").join(", ")));
        }
        if let Some(u) = sec["runAsUser"].as_u64() {
            given.push(format!("runs as uid {u}"));
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if let Some((_, path)) = host_paths.iter().find(|(v, _)| m["name"] == v.as_str()) {
                given.push(format!("host path {path} at {}", m["mountPath"].as_str().unwrap_or("?")));
            }
        }
        for d in c["devices"].as_array().into_iter().flatten() {
            given.push(format!("device {}", d["hostPath"].as_str().unwrap_or("?")));
        }
        if !given.is_empty() {
            out.push(format!("{name}: {}", given.join("; ")));
        }
    }
    out
}

pub async fn describe(args: &HubArgs, kind: &str, name: &str) -> anyhow::Result<()> {
    let kind = kind_arg(kind)?;
    let client = HubClient::connect(args)?;
    let v = client.get(&format!("/api/v1/{}/{name}{}", kind.plural(), args.namespace_query(kind))).await?;
    let now = now();
    println!("Name:        {}", s(&v, &["metadata", "name"]));
    if kind.is_namespaced() {
        println!("Namespace:   {}", s(&v, &["metadata", "namespace"]));
    }
    println!("Kind:        {}", kind.as_str());
    println!("Labels:      {}", labels(&v));
    println!("Revision:    {}", n(&v, &["metadata", "revision"]));
    println!("Generation:  {}", n(&v, &["metadata", "generation"]));
    println!(
        "Created:     {} ({} ago)",
        s(&v, &["metadata", "createdAt"]),
        age(s(&v, &["metadata", "createdAt"]), now)
    );
    println!("Spec:");
    for line in serde_yaml_ng::to_string(&v["spec"])?.lines() {
        println!("  {line}");
    }
    if kind == Kind::App
        && let Ok(spec) = serde_json::from_value::<shared_proto::AppSpec>(v["spec"].clone())
    {
        for (what, secrets) in [("Configs:", false), ("Secrets:", true)] {
            let names = spec.config_refs(secrets);
            if !names.is_empty() {
                println!("{what:<13}{}", names.into_iter().collect::<Vec<_>>().join(", "));
            }
        }
    }
    if kind == Kind::App {
        let sandbox = sandbox_lines(&v["spec"]);
        if !sandbox.is_empty() {
            println!("Sandbox (given up, or a user namespace):");
            for l in sandbox {
                println!("  {l}");
            }
        }
    }
    println!("Status:");
    match kind {
        Kind::Device => {
            for (label, path) in [
                ("Phase", "phase"),
                ("Arch", "arch"),
                ("Agent", "agentVersion"),
                ("Last seen", "lastSeenAt"),
                ("Transition", "lastTransitionAt"),
                ("Message", "message"),
            ] {
                println!("  {:<20}{}", format!("{label}:"), s(&v, &["status", path]));
            }
            println!(
                "  {:<20}{} (desired) / {} (held by the agent)",
                "Manifest revision:",
                n(&v, &["status", "desiredRevision"]),
                n(&v, &["status", "appliedRevision"])
            );
            let usage = client.get(&format!("/api/v1/devices/{name}/usage")).await.unwrap_or_default();
            let used = |c: &serde_json::Value| -> (String, String) {
                usage["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|u| u["app"] == c["app"] && u["name"] == c["name"])
                    .map(|u| {
                        (
                            format!("{}m", u["cpuMillis"].as_u64().unwrap_or(0)),
                            format!("{:.1}Mi", u["memoryBytes"].as_u64().unwrap_or(0) as f64 / 1048576.0),
                        )
                    })
                    .unwrap_or_else(|| ("-".into(), "-".into()))
            };
            let rows: Vec<Vec<String>> = v["status"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    let (cpu, mem) = used(c);
                    let name = if c["init"] == true {
                        format!("{}/{} (init)", s(c, &["app"]), s(c, &["name"]))
                    } else {
                        format!("{}/{}", s(c, &["app"]), s(c, &["name"]))
                    };
                    let ready = if c["init"] == true {
                        "-"
                    } else if c["ready"] == true {
                        "yes"
                    } else {
                        "no"
                    };
                    vec![
                        name,
                        s(c, &["phase"]).to_string(),
                        ready.to_string(),
                        cpu,
                        mem,
                        n(c, &["restarts"]).to_string(),
                        c["exitCode"].as_i64().map_or("-".into(), |x| x.to_string()),
                        s(c, &["reason"]).to_string(),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                println!("Containers:");
                for l in table(
                    &["APP/CONTAINER", "PHASE", "READY", "CPU", "MEMORY", "RESTARTS", "EXIT", "REASON"],
                    &rows,
                )
                .lines()
                {
                    println!("  {l}");
                }
            }
        }
        Kind::App => {
            println!("  Phase:     {}", s(&v, &["status", "phase"]));
            println!(
                "  Running:   {}/{}",
                n(&v, &["status", "runningDevices"]),
                n(&v, &["status", "desiredDevices"])
            );
            println!("  Message:   {}", s(&v, &["status", "message"]));
            let rows: Vec<Vec<String>> = v["status"]["devices"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    vec![
                        s(d, &["device"]).to_string(),
                        s(d, &["phase"]).to_string(),
                        s(d, &["message"]).to_string(),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                println!("Devices not running yet:");
                for l in table(&["DEVICE", "PHASE", "MESSAGE"], &rows).lines() {
                    println!("  {l}");
                }
            }
            let p =
                client.get(&format!("/api/v1/apps/{name}/placement{}", args.namespace_query(kind))).await?;
            print_placement(&p);
        }
        _ => {
            for line in serde_yaml_ng::to_string(&v["status"])?.lines() {
                println!("  {line}");
            }
        }
    }
    Ok(())
}

/// Most devices listed per section of `describe app`'s placement.
const MAX_PLACEMENT_ROWS: usize = 50;

/// The scheduler's verdicts: where the app runs, and for every device not chosen, why.
fn print_placement(p: &serde_json::Value) {
    let devices = p["devices"].as_array().cloned().unwrap_or_default();
    let (placed, rest): (Vec<_>, Vec<_>) = devices.iter().partition(|d| d["placed"].as_bool() == Some(true));
    let (wanted, other): (Vec<_>, Vec<_>) =
        rest.into_iter().partition(|d| d["selected"].as_bool() == Some(true));
    println!("Placement:   on {} of {} devices", placed.len(), devices.len());
    let section = |title: &str, rows: &[&serde_json::Value]| {
        if rows.is_empty() {
            return;
        }
        println!("  {title}:");
        let shown: Vec<Vec<String>> = rows
            .iter()
            .take(MAX_PLACEMENT_ROWS)
            .map(|d| vec![s(d, &["device"]).to_string(), s(d, &["reason"]).to_string()])
            .collect();
        for l in table(&["DEVICE", "WHY NOT"], &shown).lines() {
            println!("    {l}");
        }
        if rows.len() > MAX_PLACEMENT_ROWS {
            println!("    … and {} more", rows.len() - MAX_PLACEMENT_ROWS);
        }
    };
    section("Wanted but not placed", &wanted);
    section("Not selected", &other);
}

pub async fn delete(args: &HubArgs, kind: &str, name: &str) -> anyhow::Result<()> {
    let kind = kind_arg(kind)?;
    let client = HubClient::connect(args)?;
    let path = format!("/api/v1/{}/{name}{}", kind.plural(), args.namespace_query(kind));
    client.request(Method::DELETE, &path, None, "").await?;
    println!("{}/{name} deleted", kind.as_str().to_lowercase());
    Ok(())
}

/// The address the hub tells devices to dial (its `--advertise`, or an address of its
/// machine that is not loopback); an error saying to pass `--advertise` when it has none.
async fn agent_address(client: &HubClient) -> anyhow::Result<String> {
    let cluster = client.get("/api/v1/cluster").await?;
    if let Some(a) = cluster["agentAddress"].as_str() {
        return Ok(a.to_string());
    }
    if let Some(problem) = cluster["agentAddressProblem"].as_str() {
        bail!("{problem}");
    }
    // A hub from before the field: what the context file says, as before.
    Ok(if client.quic.is_empty() { "<hub-address>:7441".to_string() } else { client.quic.clone() })
}

pub async fn token(args: &HubArgs, cmd: &TokenCommand) -> anyhow::Result<()> {
    let client = HubClient::connect(args)?;
    match cmd {
        TokenCommand::Create { ttl, max_uses, labels, allow_labels, site, description, quiet } => {
            // Asked first: a token is no use to a device that is told no address it can reach.
            let hub = match quiet {
                true => String::new(),
                false => agent_address(&client).await?,
            };
            let body = json!({
                "ttl": ttl,
                "maxUses": max_uses,
                "labels": labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "allowLabels": allow_labels,
                "site": site,
                "description": description,
            });
            let (_, v) = client.send_json(Method::POST, "/api/v1/enrolment-tokens", &body).await?;
            let token = s(&v, &["token"]);
            if *quiet {
                println!("{token}");
                return Ok(());
            }
            println!("Enrolment token (shown once; expires {}):\n\n  {token}\n", s(&v, &["expiresAt"]));
            println!("Agent configuration (/etc/flotilla/agent.toml):\n");
            println!("  hub = \"{hub}\"\n  enrolment_token = \"{token}\"");
        }
        TokenCommand::List => {
            let v = client.get("/api/v1/enrolment-tokens").await?;
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    vec![
                        s(t, &["id"]).to_string(),
                        format!(
                            "{}/{}",
                            n(t, &["used"]),
                            t["maxUses"].as_u64().map_or("∞".into(), |m| m.to_string())
                        ),
                        s(t, &["expiresAt"]).to_string(),
                        s(t, &["site"]).to_string(),
                        s(t, &["description"]).to_string(),
                    ]
                })
                .collect();
            print!("{}", table(&["ID", "USED", "EXPIRES", "SITE", "DESCRIPTION"], &rows));
        }
        TokenCommand::Revoke { id } => {
            client.request(Method::DELETE, &format!("/api/v1/enrolment-tokens/{id}"), None, "").await?;
            println!("enrolment token {id} revoked");
        }
    }
    Ok(())
}

pub async fn api_token(args: &HubArgs, cmd: &ApiTokenCommand) -> anyhow::Result<()> {
    let client = HubClient::connect(args)?;
    match cmd {
        ApiTokenCommand::Create { role, description, ttl, sites, namespaces } => {
            let body = json!({ "role": role, "description": description, "ttl": ttl, "sites": sites, "namespaces": namespaces });
            let (_, v) = client.send_json(Method::POST, "/api/v1/api-tokens", &body).await?;
            println!("{}", s(&v, &["token"]));
        }
        ApiTokenCommand::List => {
            let v = client.get("/api/v1/api-tokens").await?;
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    vec![
                        s(t, &["id"]).to_string(),
                        s(t, &["role"]).to_string(),
                        s(t, &["createdAt"]).to_string(),
                        t["expiresAt"].as_str().unwrap_or("never").to_string(),
                        list_or_star(&t["sites"]),
                        list_or_star(&t["namespaces"]),
                        s(t, &["description"]).to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["ID", "ROLE", "CREATED", "EXPIRES", "SITES", "NAMESPACES", "DESCRIPTION"], &rows)
            );
        }
        ApiTokenCommand::Revoke { id } => {
            client.request(Method::DELETE, &format!("/api/v1/api-tokens/{id}"), None, "").await?;
            println!("api token {id} revoked");
        }
    }
    Ok(())
}

/// A JSON list of names joined with commas, or `*` when empty (no limit).
fn list_or_star(v: &Value) -> String {
    match v.as_array() {
        Some(items) if !items.is_empty() => {
            items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
        }
        _ => "*".to_string(),
    }
}

pub async fn device(args: &HubArgs, cmd: &DeviceCommand) -> anyhow::Result<()> {
    let client = HubClient::connect(args)?;
    match cmd {
        DeviceCommand::Decommission { name } => {
            client
                .send_json(Method::POST, &format!("/api/v1/devices/{name}/decommission"), &json!({}))
                .await?;
            println!("device/{name} decommissioned");
        }
        DeviceCommand::Approve { name } => {
            client.send_json(Method::POST, &format!("/api/v1/devices/{name}/approve"), &json!({})).await?;
            println!(
                "device/{name} approved: it gets its new certificate on its next request (within seconds)"
            );
        }
        DeviceCommand::Reject { name } => {
            client.send_json(Method::POST, &format!("/api/v1/devices/{name}/reject"), &json!({})).await?;
            println!("device/{name} rejected and decommissioned");
        }
    }
    Ok(())
}

pub async fn audit(args: &HubArgs, since: Option<&str>, limit: usize, format: Format) -> anyhow::Result<()> {
    let client = HubClient::connect(args)?;
    let mut query = vec![("limit", limit.to_string())];
    query.extend(since.map(|s| ("since", s.to_string())));
    let path = format!("/api/v1/audit?{}", serde_urlencoded::to_string(&query)?);
    let v = client.get(&path).await?;
    match format {
        Format::Json | Format::Yaml => output::print_value(&v, format),
        Format::Table | Format::Wide => {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                eprintln!("no audit entries");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|e| {
                    vec![
                        s(e, &["at"]).to_string(),
                        format!("{} ({})", s(e, &["tokenId"]), s(e, &["role"])),
                        s(e, &["remote"]).to_string(),
                        format!("{} {}", s(e, &["method"]), s(e, &["path"])),
                        n(e, &["status"]).to_string(),
                    ]
                })
                .collect();
            print!("{}", table(&["TIME", "TOKEN", "FROM", "CALL", "STATUS"], &rows));
            if v["truncated"] == true {
                eprintln!("(older entries left out: raise --limit or narrow --since)");
            }
            Ok(())
        }
    }
}

/// Uploads an image archive; returns the hub's Image object.
pub async fn import_image(client: &HubClient, file: &Path, name: Option<&str>) -> anyhow::Result<Value> {
    let f = tokio::fs::File::open(file).await.with_context(|| format!("opening {}", file.display()))?;
    let body = reqwest::Body::wrap_stream(file_chunks(f));
    let mut path = "/api/v1/images".to_string();
    if let Some(n) = name {
        path.push_str(&format!("?name={}", url_escape(n)));
    }
    Ok(client.request(Method::POST, &path, Some(body), "application/x-tar").await?.1)
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A file as a stream of 256 KiB chunks, for a streaming request body.
fn file_chunks(f: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> {
    futures::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

pub async fn image(args: &HubArgs, cmd: &ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Import { file, name } => {
            let client = HubClient::connect(args)?;
            let v = import_image(&client, file, name.as_deref()).await?;
            println!("image/{} imported ({})", s(&v, &["metadata", "name"]), s(&v, &["spec", "digest"]));
            Ok(())
        }
        ImageCommand::List => get(args, "images", None, Format::Table, &Default::default(), false).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_splits_and_skips_empty_documents() {
        let docs = parse_documents("---\nkind: Site\nmetadata: {name: a}\n---\n---\nkind: App\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["kind"], "App");
        assert!(parse_documents("kind: [unclosed").is_err());
    }

    #[test]
    fn describe_names_what_each_container_gives_up_of_the_sandbox() {
        let spec = serde_json::json!({
            "volumes": [{"name": "spool", "hostPath": {"path": "/var/spool"}}, {"name": "db", "persistent": {}}],
            "containers": [
                {"name": "plain", "security": {"privileged": false, "addCapabilities": [], "dropCapabilities": []}},
                {"name": "pos", "security": {"addCapabilities": ["NET_RAW"], "runAsUser": 1000},
                 "volumeMounts": [{"name": "spool", "mountPath": "/spool"}, {"name": "db", "mountPath": "/db"}],
                 "devices": [{"hostPath": "/dev/ttyUSB0"}]},
            ],
            "initContainers": [{"name": "root", "security": {"privileged": true}}],
        });
        assert_eq!(
            sandbox_lines(&spec),
            vec![
                "root: PRIVILEGED (every capability the agent holds, every device, no masked paths, writable /sys); seccomp: unconfined"
                    .to_string(),
                "pos: adds NET_RAW; runs as uid 1000; host path /var/spool at /spool; device /dev/ttyUSB0"
                    .to_string(),
            ]
        );
        let userns =
            serde_json::json!({"userNamespace": true, "containers": [{"name": "plain", "security": {}}]});
        assert_eq!(
            sandbox_lines(&userns),
            vec!["user namespace: root in every container is an unprivileged user on the device".to_string()]
        );
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("role=pos").unwrap(), ("role".into(), "pos".into()));
        assert!(parse_label("role").is_err());
        assert_eq!(url_escape("demo:1.0/x"), "demo%3A1.0%2Fx");
    }
}
