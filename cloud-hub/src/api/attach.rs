//! `GET /api/v1/apps/{app}/logs` and `GET /api/v1/apps/{app}/exec` (a WebSocket): a
//! container's log and a command run in it, through the device's own connection to
//! the hub ([`crate::sync::attach`]).
//!
//! Logs stream as `text/plain` (chunked), so `curl` follows them too. Exec speaks the
//! channel protocol Kubernetes uses on its WebSockets: binary messages start with a
//! channel byte (0 stdin from the client; 1 stdout and 2 stderr from the hub); text
//! messages are JSON: `{"resize":{"cols":…,"rows":…}}` and `{"stdinEof":true}` from the
//! client, `{"exitCode":n}` or `{"error":"…"}` from the hub, last.

use super::HubState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use crate::sync::attach::{AttachError, Attached};
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use shared_proto::store::{Object, Role, StoreKind};
use shared_proto::wire::{AttachFrame, AttachInput, AttachKind, ExecRequest, LogsRequest, MAX_ATTACH_CHUNK};
use std::sync::Arc;

/// Query parameters, repeated `command` included.
#[derive(Debug, Default, PartialEq)]
pub struct Params {
    pub device: Option<String>,
    pub container: String,
    pub follow: bool,
    pub tail_lines: Option<u32>,
    pub since_seconds: Option<u64>,
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub cols: u16,
    pub rows: u16,
}

fn flag(v: &str, name: &str) -> ApiResult<bool> {
    match v {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::BadRequest(format!("{name}: expected true or false, got {v:?}"))),
    }
}

fn number<T: std::str::FromStr>(v: &str, name: &str) -> ApiResult<T> {
    v.parse().map_err(|_| ApiError::BadRequest(format!("{name}: expected a number, got {v:?}")))
}

impl Params {
    pub fn parse(query: Option<&str>) -> ApiResult<Params> {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "device" => p.device = Some(v.into_owned()).filter(|d| !d.is_empty()),
                "container" => p.container = v.into_owned(),
                "follow" => p.follow = flag(&v, "follow")?,
                "tailLines" => p.tail_lines = Some(number(&v, "tailLines")?),
                "sinceSeconds" => p.since_seconds = Some(number(&v, "sinceSeconds")?),
                "command" => p.command.push(v.into_owned()),
                "tty" => p.tty = flag(&v, "tty")?,
                "stdin" => p.stdin = flag(&v, "stdin")?,
                "cols" => p.cols = number(&v, "cols")?,
                "rows" => p.rows = number(&v, "rows")?,
                // Read with the app's name (`objects::target`).
                "namespace" => {}
                other => return Err(ApiError::BadRequest(format!("unknown query parameter {other:?}"))),
            }
        }
        if p.command.len() > shared_proto::wire::MAX_EXEC_ARGS
            || p.command.iter().any(|a| a.len() > shared_proto::wire::MAX_EXEC_ARG_BYTES || a.contains('\0'))
        {
            return Err(ApiError::BadRequest(format!(
                "command: at most {} arguments of {} bytes, without NUL",
                shared_proto::wire::MAX_EXEC_ARGS,
                shared_proto::wire::MAX_EXEC_ARG_BYTES
            )));
        }
        Ok(p)
    }
}

/// The device the call is about: the one named, or the only one the app runs on.
async fn pick_device(state: &HubState, caller: &Caller, app: &str, named: Option<&str>) -> ApiResult<String> {
    match state.store.get_local(StoreKind::App, app)? {
        Some(a) => caller.check_sees(&a)?,
        None => return Err(ApiError::NotFound(format!("App {app:?} not found"))),
    }
    let runs_on = |m: &shared_proto::manifest::DesiredManifest| m.apps.iter().any(|a| a.name == app);
    let device = match named {
        Some(d) => {
            match state.store.get_local(StoreKind::Manifest, d)? {
                Some(Object::Manifest(m)) if runs_on(&m) => {}
                _ => return Err(ApiError::NotFound(format!("app {app:?} is not placed on device {d:?}"))),
            }
            d.to_string()
        }
        None => {
            let mut on: Vec<String> = state
                .store
                .list(StoreKind::Manifest)
                .await?
                .into_iter()
                .filter_map(|o| match o {
                    Object::Manifest(m) if runs_on(&m) => Some(m.device),
                    _ => None,
                })
                .collect();
            match on.len() {
                0 => return Err(ApiError::NotFound(format!("app {app:?} is not placed on any device"))),
                1 => on.remove(0),
                n => {
                    on.truncate(10);
                    return Err(ApiError::BadRequest(format!(
                        "app {app:?} runs on {n} devices ({}{}): name one with device=",
                        on.join(", "),
                        if n > 10 { ", …" } else { "" }
                    )));
                }
            }
        }
    };
    match state.store.get_local(StoreKind::Device, &device)? {
        Some(d) => caller.check_sees(&d)?,
        None => return Err(ApiError::NotFound(format!("device {device:?} not found"))),
    }
    Ok(device)
}

fn attach_error(e: AttachError) -> ApiError {
    match e {
        AttachError::NotConnected(_) => ApiError::Unavailable(format!(
            "{e}: its containers keep running, but logs and exec need it online"
        )),
        AttachError::Refused(m) => ApiError::Conflict(m),
        AttachError::TimedOut(..) => ApiError::Unavailable(e.to_string()),
        AttachError::Busy(_) => ApiError::Conflict(e.to_string()),
    }
}

/// Asks the device and waits for its first word: it started, or why it cannot.
async fn start(
    state: &HubState,
    device: &str,
    app: &str,
    container: &str,
    what: AttachKind,
) -> ApiResult<Attached> {
    let mut attached = state.attach.request(device, app, container, what).await.map_err(attach_error)?;
    match attached.frames.recv().await {
        Some(AttachFrame::Started) => Ok(attached),
        Some(AttachFrame::Error { message }) => Err(ApiError::NotFound(message)),
        Some(other) => Err(ApiError::Internal(format!("the device began with {other:?}"))),
        None => Err(ApiError::Unavailable(format!("device {device} dropped the stream"))),
    }
}

pub async fn logs(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(app): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let p = Params::parse(query.as_deref())?;
    // Devices know the app by its store name.
    let app = super::objects::target(shared_proto::Kind::App, &app, query.as_deref())?.store_name;
    let device = pick_device(&state, &caller, &app, p.device.as_deref()).await?;
    let since_unix_ms =
        p.since_seconds.map(|s| state.clock.now().millis().saturating_sub(s.saturating_mul(1000)));
    let what = AttachKind::Logs(LogsRequest { follow: p.follow, tail_lines: p.tail_lines, since_unix_ms });
    let Attached { frames, input, slot } = start(&state, &device, &app, &p.container, what).await?;
    // `input` and the slot live as long as the body: dropping the input would end the
    // stream.
    let body = futures::stream::unfold((frames, (input, slot)), |(mut frames, input)| async move {
        loop {
            match frames.recv().await? {
                AttachFrame::Stdout(b) | AttachFrame::Stderr(b) => {
                    return Some((Ok::<_, std::io::Error>(bytes::Bytes::from(b)), (frames, input)));
                }
                AttachFrame::Started => continue,
                AttachFrame::Exit { .. } => return None,
                AttachFrame::Error { message } => {
                    let text = format!("\nflotilla: the log ended: {message}\n");
                    drop(frames);
                    return Some((Ok(bytes::Bytes::from(text)), (mpsc_closed(), input)));
                }
            }
        }
    });
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (axum::http::header::HeaderName::from_static("flotilla-device"), device.as_str()),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// A receiver that yields nothing: ends a stream after its last message.
fn mpsc_closed() -> tokio::sync::mpsc::Receiver<AttachFrame> {
    tokio::sync::mpsc::channel(1).1
}

pub async fn exec(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(app): Path<String>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    caller.require(Role::Operator)?;
    let p = Params::parse(query.as_deref())?;
    if p.command.is_empty() {
        return Err(ApiError::BadRequest("command: give the program and its arguments".into()));
    }
    let app = super::objects::target(shared_proto::Kind::App, &app, query.as_deref())?.store_name;
    let device = pick_device(&state, &caller, &app, p.device.as_deref()).await?;
    let what = AttachKind::Exec(ExecRequest {
        command: p.command,
        tty: p.tty,
        stdin: p.stdin,
        cols: p.cols,
        rows: p.rows,
    });
    let attached = start(&state, &device, &app, &p.container, what).await?;
    Ok(ws.max_message_size(MAX_ATTACH_CHUNK + 1).on_upgrade(move |socket| relay(socket, attached)))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Control {
    resize: Option<Resize>,
    #[serde(default)]
    stdin_eof: bool,
}

#[derive(serde::Deserialize)]
struct Resize {
    cols: u16,
    rows: u16,
}

async fn relay(mut socket: WebSocket, attached: Attached) {
    let Attached { mut frames, input, slot: _slot } = attached;
    let mut input = Some(input);
    loop {
        tokio::select! {
            frame = frames.recv() => {
                let msg = match frame {
                    Some(AttachFrame::Stdout(b)) => Message::Binary(channel(1, b)),
                    Some(AttachFrame::Stderr(b)) => Message::Binary(channel(2, b)),
                    Some(AttachFrame::Started) => continue,
                    Some(AttachFrame::Exit { code }) => Message::Text(serde_json::json!({ "exitCode": code }).to_string().into()),
                    Some(AttachFrame::Error { message }) => Message::Text(serde_json::json!({ "error": message }).to_string().into()),
                    None => Message::Text(serde_json::json!({ "error": "the device dropped the stream" }).to_string().into()),
                };
                let last = matches!(msg, Message::Text(_));
                if socket.send(msg).await.is_err() || last {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            }
            msg = socket.recv() => {
                let Some(tx) = input.as_ref() else { continue };
                let sent = match msg {
                    Some(Ok(Message::Binary(b))) if b.first() == Some(&0) => tx.send(AttachInput::Stdin(b[1..].to_vec())).await,
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<Control>(&t) {
                        Ok(Control { resize: Some(r), .. }) => tx.send(AttachInput::Resize { cols: r.cols, rows: r.rows }).await,
                        Ok(Control { stdin_eof: true, .. }) => tx.send(AttachInput::StdinEof).await,
                        _ => Ok(()),
                    },
                    Some(Ok(_)) => Ok(()),
                    // The operator went away: so does the command's stream.
                    Some(Err(_)) | None => return,
                };
                if sent.is_err() {
                    input = None;
                }
            }
        }
    }
}

fn channel(n: u8, mut data: Vec<u8>) -> bytes::Bytes {
    data.insert(0, n);
    bytes::Bytes::from(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_parsed_and_bounded() {
        let p = Params::parse(Some(
            "device=pi&container=c&command=sh&command=-c&command=echo%20hi&tty=true&cols=80",
        ))
        .unwrap();
        assert_eq!(p.device.as_deref(), Some("pi"));
        assert_eq!(p.command, vec!["sh", "-c", "echo hi"]);
        assert!(p.tty && !p.stdin);
        assert_eq!(p.cols, 80);
        let p = Params::parse(Some("follow&tailLines=10&sinceSeconds=60")).unwrap();
        assert!(p.follow);
        assert_eq!((p.tail_lines, p.since_seconds), (Some(10), Some(60)));
        assert!(Params::parse(Some("tailLines=ten")).is_err());
        assert!(Params::parse(Some("bogus=1")).is_err());
        assert!(Params::parse(Some("command=a%00b")).is_err());
    }
}
