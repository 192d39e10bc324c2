//! `flotilla hub members|remove|join-token`: the hub cluster's membership, as an operator
//! sees it (`flotilla hub serve` and `flotilla hub join` are in `crate::hub`).

use super::client::{HubArgs, HubClient};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Debug, clap::Subcommand)]
pub enum JoinTokenCommand {
    /// Make a token with which a new hub joins (`flotilla hub join URL --join-token T`).
    Create {
        /// How long the token stays valid (at most 7d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

fn print_members(v: &Value) {
    println!("{:<8} {:<28} {:<8} {:<7} DEVICES AT", "NODE", "RAFT ADDRESS", "VOTER", "LEADER");
    for m in v["members"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<28} {:<8} {:<7} {}",
            m["nodeId"].as_u64().unwrap_or(0),
            m["raftAddr"].as_str().unwrap_or("-"),
            if m["voter"].as_bool().unwrap_or(false) { "yes" } else { "learner" },
            if m["leader"].as_bool().unwrap_or(false) { "*" } else { "-" },
            m["agentAddress"].as_str().unwrap_or("-"),
        );
    }
    if let Some(n) = v["fleetConnectedDevices"].as_u64() {
        println!("devices connected to the cluster: {n}");
    }
    println!("revision {}", v["revision"].as_u64().unwrap_or(0));
}

pub async fn members(args: &HubArgs) -> anyhow::Result<()> {
    let client = HubClient::connect(args)?;
    let (_, v) = client.request(Method::GET, "/api/v1/cluster", None, "").await?;
    print_members(&v);
    Ok(())
}

pub async fn remove(args: &HubArgs, node_id: u64) -> anyhow::Result<()> {
    let client = HubClient::connect(args)?;
    let (_, v) =
        client.request(Method::DELETE, &format!("/api/v1/cluster/members/{node_id}"), None, "").await?;
    println!("removed node {node_id}; stop that hub and keep its data directory away from the cluster");
    print_members(&v);
    Ok(())
}

pub async fn join_token(args: &HubArgs, cmd: &JoinTokenCommand) -> anyhow::Result<()> {
    let JoinTokenCommand::Create { ttl } = cmd;
    let client = HubClient::connect(args)?;
    let (_, v) = client
        .send_json(Method::POST, "/api/v1/cluster/join-tokens", &json!({ "ttlSeconds": ttl.as_secs() }))
        .await?;
    println!("{}", v["token"].as_str().unwrap_or_default());
    eprintln!(
        "valid until {}: on the new hub run `flotilla hub join {} --join-token TOKEN --raft-listen ADDR …`",
        v["expiresAt"].as_str().unwrap_or("-"),
        client.base
    );
    Ok(())
}
