//! `flotilla demo`: the whole path on one machine. Starts a hub and an agent as
//! separate processes, enrols the agent, imports the demo image, applies the demo
//! app, waits until it answers HTTP, and tears everything down on Ctrl-C.

use crate::cli::client::{HubArgs, HubClient};
use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Keep everything here instead of a temporary directory (kept after exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The demo image archive (built by `cargo xtask images`).
    #[arg(long, default_value = "images/out/demo-httpd.oci.tar")]
    pub image: PathBuf,
    /// Port the demo app answers HTTP on.
    #[arg(long, default_value_t = 8080)]
    pub app_port: u16,
    #[arg(long, default_value = "127.0.0.1:7440")]
    pub api_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7441")]
    pub quic_listen: SocketAddr,
    /// The agent binary; by default `flotilla-agent` next to this one.
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this executable")?;
    let p = me.with_file_name(name);
    if p.exists() {
        Ok(p)
    } else {
        bail!(
            "{name} not found next to {}: build it (cargo build -p edge-agent) or pass --agent-bin",
            me.display()
        )
    }
}

/// Spawns `cmd`, forwards its output lines with a prefix, and returns once a stdout
/// line contains `ready` (or fails if the process exits first).
async fn spawn_until(
    mut cmd: Command,
    prefix: &'static str,
    ready: &'static str,
    deadline: Duration,
) -> anyhow::Result<Child> {
    // Their own process group: Ctrl-C in the terminal reaches the demo only, which then
    // shuts the hub and the agent down in order.
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("starting the {prefix}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let verbose = std::env::var_os("FLOTILLA_DEMO_VERBOSE").is_some();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if verbose || l.contains("ERROR") || l.contains("WARN") {
                eprintln!("[{prefix}] {l}");
            }
        }
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains(ready)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
            if verbose {
                println!("[{prefix}] {l}");
            }
        }
    });
    tokio::select! {
        r = rx => { r.with_context(|| format!("the {prefix} exited before it was ready"))?; }
        status = child.wait() => bail!("the {prefix} exited before it was ready: {}", status?),
        _ = tokio::time::sleep(deadline) => bail!("the {prefix} was not ready within {deadline:?}"),
    }
    Ok(child)
}

async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<Value>>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= end {
            match last_err {
                Some(e) => bail!("{what}: not within {deadline:?}: {e:#}"),
                None => bail!("{what}: not within {deadline:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn demo_app(port: u16) -> Value {
    json!({
        "apiVersion": shared_proto::API_VERSION,
        "kind": "App",
        "metadata": { "name": "demo", "labels": { "tier": "demo" } },
        "spec": {
            "selector": { "matchLabels": { "role": "demo" } },
            "containers": [{
                "name": "web",
                "image": "demo-httpd:latest",
                "env": [{ "name": "PORT", "value": port.to_string() }],
                "ports": [{ "name": "http", "containerPort": port }],
                "resources": { "limits": { "cpu": "250m", "memory": "32Mi", "pids": 64 } }
            }],
            "restartPolicy": "Always",
            "network": "Host"
        }
    })
}

async fn http_ok(port: u16) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    Ok(buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200"))
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo runs real containers: run it as root");
    }
    if !args.image.exists() {
        bail!(
            "demo image {} not found: build it with `cargo xtask images` or pass --image",
            args.image.display()
        );
    }
    let agent_bin = match &args.agent_bin {
        Some(p) => p.clone(),
        None => sibling_binary("flotilla-agent")?,
    };
    let (dir, _temp) = match &args.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("flotilla-demo-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::create_dir_all(&dir)?;
    let hub_dir = dir.join("hub");
    println!("Starting the hub ({})...", hub_dir.display());
    let mut hub_cmd = Command::new(std::env::current_exe()?);
    hub_cmd
        .args(["hub", "serve", "--data-dir"])
        .arg(&hub_dir)
        .args(["--api-listen", &args.api_listen.to_string(), "--quic-listen", &args.quic_listen.to_string()])
        .args(["--heartbeat-interval", "5s", "--offline-grace", "15s"]);
    let mut hub = spawn_until(hub_cmd, "hub", "hub ready", Duration::from_secs(60)).await?;
    let context = hub_dir.join("context.json");
    let hub_args =
        HubArgs { hub: None, token: None, ca_cert: None, context: Some(context.clone()), namespace: None };
    let client = HubClient::connect(&hub_args)?;

    let result = run_with_hub(&args, &dir, &agent_bin, &client, &context).await;
    let (mut agent, outcome) = match result {
        Ok(agent) => {
            crate::hub::wait_for_signal().await;
            (Some(agent), Ok(()))
        }
        Err((agent, e)) => (agent, Err(e)),
    };
    println!("\nStopping: removing the demo app...");
    let _ = client.request(Method::DELETE, "/api/v1/apps/demo", None, "").await;
    if agent.is_some() {
        let removed = wait_for("containers removed", Duration::from_secs(30), || async {
            let v = client.get("/api/v1/devices/demo-device").await?;
            Ok(v["status"]["containers"].as_array().is_some_and(|c| c.is_empty()).then_some(v))
        })
        .await;
        if let Err(e) = removed {
            eprintln!("warning: {e:#}");
        }
    }
    if let Some(a) = agent.as_mut() {
        terminate(a).await;
    }
    // Whatever the agent did not get to, remove now: containers, mounts, cgroups.
    let status = std::process::Command::new(&agent_bin)
        .args(["reset", "--config"])
        .arg(dir.join("agent.toml"))
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("warning: flotilla-agent reset did not finish cleanly");
    }
    terminate(&mut hub).await;
    if args.data_dir.is_none() {
        println!("Removed {}", dir.display());
    }
    outcome
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

async fn run_with_hub(
    args: &DemoArgs,
    dir: &Path,
    agent_bin: &Path,
    client: &HubClient,
    context: &Path,
) -> Result<Child, (Option<Child>, anyhow::Error)> {
    let fail = |e: anyhow::Error| (None, e);
    println!("Importing {}...", args.image.display());
    let image =
        crate::cli::import_image(client, &args.image, Some("demo-httpd:latest")).await.map_err(fail)?;
    println!(
        "  image/{} {}",
        image["metadata"]["name"].as_str().unwrap_or(""),
        image["spec"]["digest"].as_str().unwrap_or("")
    );

    let (_, token) = client
        .send_json(
            Method::POST,
            "/api/v1/enrolment-tokens",
            &json!({ "ttl": "1h", "maxUses": 1, "allowLabels": ["role=demo"], "description": "demo" }),
        )
        .await
        .map_err(fail)?;
    let config = format!(
        "hub = \"{}\"\nenrolment_token = \"{}\"\nname = \"demo-device\"\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n\n[labels]\nrole = \"demo\"\n",
        client.quic,
        token["token"].as_str().unwrap_or_default(),
        dir.join("agent").display(),
        dir.join("agent-run").display(),
    );
    let config_path = dir.join("agent.toml");
    provisioning::files::write_private_file(&config_path, config.as_bytes()).map_err(|e| fail(e.into()))?;
    println!("Starting the agent...");
    let mut cmd = Command::new(agent_bin);
    cmd.args(["run", "--config"]).arg(&config_path);
    let agent = spawn_until(cmd, "agent", "agent running", Duration::from_secs(60)).await.map_err(fail)?;
    let with_agent = |e: anyhow::Error, agent: Child| (Some(agent), e);

    println!("Applying the demo app...");
    if let Err(e) = client.send_json(Method::PUT, "/api/v1/apps/demo", &demo_app(args.app_port)).await {
        return Err(with_agent(e, agent));
    }
    let waited = wait_for("demo app running", Duration::from_secs(120), || async {
        let v = client.get("/api/v1/apps/demo").await?;
        Ok((v["status"]["phase"] == "Running").then_some(v))
    })
    .await;
    if let Err(e) = waited {
        return Err(with_agent(e, agent));
    }
    let port = args.app_port;
    if let Err(e) = wait_for("demo app answering HTTP", Duration::from_secs(30), || async {
        Ok(http_ok(port).await?.then_some(Value::Null))
    })
    .await
    {
        return Err(with_agent(e, agent));
    }
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "flotilla".into());
    println!();
    println!("Flotilla demo is running.");
    println!("  app      http://127.0.0.1:{port}/   (curl http://127.0.0.1:{port}/healthz)");
    println!("  hub API  {}", client.base);
    println!("  CLI      export FLOTILLA_CONTEXT={}", context.display());
    println!("           {exe} get devices");
    println!("           {exe} get apps");
    println!("           {exe} describe app demo");
    println!("Press Ctrl-C to stop; the app, its containers and cgroups are removed.");
    Ok(agent)
}
