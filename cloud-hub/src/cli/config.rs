//! `flotilla create config|secret NAME --from-literal K=V --from-file [K=]PATH`: builds
//! the object from values and files, as `kubectl create secret generic` does, so a
//! password never has to sit in a YAML file. Re-running it replaces the data.

use super::client::{HubArgs, HubClient};
use anyhow::{Context, bail};
use base64::Engine;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::path::Path;

#[derive(Subcommand)]
pub enum CreateCommand {
    /// A Config: files or values apps mount or read into their environment.
    Config(DataArgs),
    /// A Secret: like a Config, sealed with the hub's key and never shown again.
    Secret(DataArgs),
}

#[derive(clap::Args)]
pub struct DataArgs {
    pub name: String,
    /// `KEY=VALUE` (repeatable).
    #[arg(long = "from-literal")]
    pub literals: Vec<String>,
    /// `PATH` (the key is the file name) or `KEY=PATH` (repeatable).
    #[arg(long = "from-file")]
    pub files: Vec<String>,
}

/// The object's `spec`: UTF-8 values in `data`, others base64 in `binaryData`.
pub fn spec_from(args: &DataArgs) -> anyhow::Result<Value> {
    let mut data = Map::new();
    let mut binary = Map::new();
    let mut put = |key: &str, bytes: Vec<u8>, source: &str| -> anyhow::Result<()> {
        if data.contains_key(key) || binary.contains_key(key) {
            bail!("{source}: key {key:?} is given twice");
        }
        match String::from_utf8(bytes) {
            Ok(s) => data.insert(key.to_string(), Value::String(s)),
            Err(e) => binary.insert(
                key.to_string(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
            ),
        };
        Ok(())
    };
    for l in &args.literals {
        let Some((k, v)) = l.split_once('=') else { bail!("--from-literal {l:?}: expected KEY=VALUE") };
        put(k, v.as_bytes().to_vec(), "--from-literal")?;
    }
    for f in &args.files {
        let (key, path) = match f.split_once('=') {
            Some((k, p)) => (k.to_string(), p),
            None => {
                let name = Path::new(f).file_name().and_then(|n| n.to_str()).unwrap_or("");
                (name.to_string(), f.as_str())
            }
        };
        let meta = std::fs::metadata(path).with_context(|| format!("--from-file {path}"))?;
        if meta.len() > shared_proto::validate::MAX_CONFIG_BYTES as u64 {
            bail!(
                "--from-file {path}: {} bytes, over the {}-byte limit",
                meta.len(),
                shared_proto::validate::MAX_CONFIG_BYTES
            );
        }
        let bytes = std::fs::read(path).with_context(|| format!("--from-file {path}"))?;
        put(&key, bytes, "--from-file")?;
    }
    if data.is_empty() && binary.is_empty() {
        bail!("give at least one --from-literal or --from-file");
    }
    Ok(json!({ "data": data, "binaryData": binary }))
}

pub async fn create(args: &HubArgs, command: &CreateCommand) -> anyhow::Result<()> {
    let (kind, data) = match command {
        CreateCommand::Config(d) => (shared_proto::Kind::Config, d),
        CreateCommand::Secret(d) => (shared_proto::Kind::Secret, d),
    };
    let body = json!({
        "apiVersion": shared_proto::API_VERSION,
        "kind": kind.as_str(),
        "metadata": { "name": data.name },
        "spec": spec_from(data)?,
    });
    let client = HubClient::connect(args)?;
    let (status, headers, _) = client
        .request_with_headers(
            Method::PUT,
            &format!("/api/v1/{}/{}{}", kind.plural(), data.name, args.namespace_query(kind)),
            Some(serde_json::to_vec(&body)?.into()),
            "application/json",
        )
        .await?;
    let result = headers
        .get(crate::api::objects::APPLY_RESULT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(if status == reqwest::StatusCode::CREATED { "created" } else { "configured" });
    println!("{}/{} {result}", kind.as_str().to_lowercase(), data.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_files_become_data_or_binary_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.toml"), "port = 80\n").unwrap();
        std::fs::write(dir.path().join("logo"), [0xff, 0x00]).unwrap();
        let args = DataArgs {
            name: "pos".into(),
            literals: vec!["user=pos".into(), "eq=a=b".into()],
            files: vec![
                dir.path().join("app.toml").display().to_string(),
                format!("logo.bin={}", dir.path().join("logo").display()),
            ],
        };
        let spec = spec_from(&args).unwrap();
        assert_eq!(spec["data"]["user"], "pos");
        assert_eq!(spec["data"]["eq"], "a=b");
        assert_eq!(spec["data"]["app.toml"], "port = 80\n");
        assert_eq!(spec["binaryData"]["logo.bin"], "/wA=");
        let twice = DataArgs { name: "x".into(), literals: vec!["a=1".into(), "a=2".into()], files: vec![] };
        assert!(spec_from(&twice).is_err());
        let none = DataArgs { name: "x".into(), literals: vec![], files: vec![] };
        assert!(spec_from(&none).is_err());
    }
}
