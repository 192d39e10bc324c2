//! `flotilla logs` and `flotilla exec`: a container's log and a command in it, through
//! the hub (which reaches the device over the connection the device keeps to it).

use super::client::{HubArgs, HubClient};
use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use std::io::Write;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct LogsArgs {
    pub app: String,
    /// The device (needed when the app runs on several).
    #[arg(long, short = 'd')]
    pub device: Option<String>,
    /// The container (needed when the app has several).
    #[arg(long, short = 'c')]
    pub container: Option<String>,
    /// Keep printing what the container writes.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u32>,
    /// Only what was written in this last while (`10m`, `2h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
}

#[derive(clap::Args)]
pub struct ExecArgs {
    pub app: String,
    #[arg(long, short = 'd')]
    pub device: Option<String>,
    #[arg(long, short = 'c')]
    pub container: Option<String>,
    /// Pass this terminal's input to the command.
    #[arg(long, short = 'i')]
    pub stdin: bool,
    /// Run the command on a terminal (with -i: an interactive shell).
    #[arg(long, short = 't')]
    pub tty: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn query(pairs: &[(&str, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

fn common(device: &Option<String>, container: &Option<String>) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    if let Some(d) = device {
        pairs.push(("device", d.clone()));
    }
    if let Some(c) = container {
        pairs.push(("container", c.clone()));
    }
    pairs
}

pub async fn logs(args: &HubArgs, a: &LogsArgs) -> anyhow::Result<()> {
    let client = HubClient::connect(args)?;
    let mut pairs = common(&a.device, &a.container);
    pairs.extend(args.namespace.clone().map(|ns| ("namespace", ns)));
    if a.follow {
        pairs.push(("follow", "true".into()));
    }
    if let Some(n) = a.tail {
        pairs.push(("tailLines", n.to_string()));
    }
    if let Some(s) = a.since {
        pairs.push(("sinceSeconds", s.as_secs().max(1).to_string()));
    }
    let resp = client.get_stream(&format!("/api/v1/apps/{}/logs?{}", a.app, query(&pairs))).await?;
    let mut body = resp.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the hub dropped the log stream")?;
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(())
}

/// Puts the terminal in raw mode while it lives (for `exec -t`).
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else { return RawMode(None) };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills a winsize, which outlives the call.
    let mut ws: nix::libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { nix::libc::ioctl(nix::libc::STDOUT_FILENO, nix::libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Runs the command; returns its exit code.
pub async fn exec(args: &HubArgs, a: &ExecArgs) -> anyhow::Result<i32> {
    let client = HubClient::connect(args)?;
    let mut pairs = common(&a.device, &a.container);
    for c in &a.command {
        pairs.push(("command", c.clone()));
    }
    let size = if a.tty { terminal_size() } else { None };
    if a.tty {
        pairs.push(("tty", "true".into()));
        let (cols, rows) = size.unwrap_or((80, 24));
        pairs.push(("cols", cols.to_string()));
        pairs.push(("rows", rows.to_string()));
    }
    if a.stdin {
        pairs.push(("stdin", "true".into()));
    }
    pairs.extend(args.namespace.clone().map(|ns| ("namespace", ns)));
    let ws = client.websocket(&format!("/api/v1/apps/{}/exec?{}", a.app, query(&pairs))).await?;
    let (mut tx, mut rx) = ws.split();
    let _raw = (a.tty && a.stdin && std::io::IsTerminal::is_terminal(&std::io::stdin())).then(RawMode::enter);
    let (input_tx, mut input_rx) = tokio::sync::mpsc::channel::<Message>(8);
    if a.stdin {
        let input = input_tx.clone();
        // A thread of its own: reading a terminal blocks.
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = input.blocking_send(Message::Text(r#"{"stdinEof":true}"#.into()));
                        return;
                    }
                    Ok(n) => {
                        let mut msg = Vec::with_capacity(n + 1);
                        msg.push(0);
                        msg.extend_from_slice(&buf[..n]);
                        if input.blocking_send(Message::Binary(msg.into())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    if a.tty {
        let input = input_tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((cols, rows)) = terminal_size() {
                    let msg = format!(r#"{{"resize":{{"cols":{cols},"rows":{rows}}}}}"#);
                    if input.send(Message::Text(msg.into())).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(input_tx);
    loop {
        tokio::select! {
            Some(msg) = input_rx.recv() => tx.send(msg).await.context("sending input to the hub")?,
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => match b.first() {
                    Some(1) => { let mut o = std::io::stdout().lock(); o.write_all(&b[1..])?; o.flush()?; }
                    Some(2) => { let mut e = std::io::stderr().lock(); e.write_all(&b[1..])?; e.flush()?; }
                    _ => {}
                },
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    if let Some(code) = v["exitCode"].as_i64() {
                        let _ = tx.send(Message::Close(None)).await;
                        return Ok(i32::try_from(code).unwrap_or(1));
                    }
                    if let Some(e) = v["error"].as_str() {
                        bail!("{e}");
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the hub dropped the connection: {e}"),
                None => bail!("the hub closed the connection before the command ended"),
            },
        }
    }
}
