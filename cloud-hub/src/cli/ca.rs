//! `flotilla ca`: the fleet CA's status and its rotation without re-flashing devices
//! (the steps are in `sync::pki`). After each step the CLI keeps its own context file
//! trusting whatever the hub may present.

use super::client::{HubArgs, HubClient};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// The fleet CA, the rotation under way and the devices it waits for.
    Status,
    /// Stage a new CA: devices learn to trust it the next time they connect.
    Rotate,
    /// Make the staged CA the fleet CA: the hub presents a certificate it signed and
    /// devices renew onto it. Refused while devices have not connected since staging.
    Activate {
        /// Activate even though some devices would no longer trust the hub.
        #[arg(long)]
        force: bool,
    },
    /// Stop trusting the CAs the fleet CA replaced. Refused while devices hold only
    /// their certificates.
    Retire {
        #[arg(long)]
        force: bool,
    },
}

fn print_status(v: &Value) {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("-").to_string();
    println!("fleet CA     {}", s("/fleet/fingerprint"));
    match v.get("next").filter(|n| !n.is_null()) {
        Some(_) => println!("staged       {} (since {})", s("/next/fingerprint"), s("/next/stagedAt")),
        None => println!("staged       -"),
    }
    let previous: Vec<&str> =
        v["previous"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    println!("previous     {}", if previous.is_empty() { "-".to_string() } else { previous.join(", ") });
    println!("devices      {}", v["devices"].as_u64().unwrap_or(0));
    for (key, what) in [
        ("notSeenSinceStaged", "not connected since the new CA was staged"),
        ("onPreviousCa", "holding only certificates of a previous CA"),
    ] {
        let names: Vec<&str> =
            v[key].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if !names.is_empty() {
            println!("{} device(s) {what}: {}", names.len(), names.join(", "));
        }
    }
}

pub async fn run(args: &HubArgs, cmd: &CaCommand) -> anyhow::Result<()> {
    let client = HubClient::connect(args)?;
    let (_, status) = match cmd {
        CaCommand::Status => client.request(Method::GET, "/api/v1/ca", None, "").await?,
        CaCommand::Rotate => client.send_json(Method::POST, "/api/v1/ca/rotate", &json!({})).await?,
        CaCommand::Activate { force } => {
            client.send_json(Method::POST, &format!("/api/v1/ca/activate?force={force}"), &json!({})).await?
        }
        CaCommand::Retire { force } => {
            client.send_json(Method::POST, &format!("/api/v1/ca/retire?force={force}"), &json!({})).await?
        }
    };
    print_status(&status);
    if let Some(pem) = status["trustedPem"].as_str()
        && let Some(path) = client.save_trusted(pem)?
    {
        println!("updated {} to trust the fleet's current CAs", path.display());
    }
    Ok(())
}
