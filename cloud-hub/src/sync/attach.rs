//! Logs and exec through the hub. An API call asks the device's sync session to send
//! [`HubFrame::Attach`](shared_proto::wire::HubFrame::Attach); the device answers by
//! opening a stream of its own (`StreamOpen::Attach` with the request's id) over the
//! connection it already has, so nothing ever dials a device. This broker pairs the
//! waiting call with that stream: frames from the device go to the call, the call's
//! input goes to the device. Only the device the request was sent to can take it up.

use shared_proto::wire::{AttachFrame, AttachInput, AttachKind, AttachRequest};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the device has to open the stream it was asked for.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Most logs and exec streams open at once to one device: they share its QUIC
/// connection's streams with image downloads.
pub const MAX_PER_DEVICE: usize = 4;
/// Frames buffered each way: past it the slower side holds the other back (QUIC flow
/// control carries that to the device).
const BUFFER: usize = 16;

/// A request on its way to a device's session, and where the session says whether it
/// could send it.
pub type SessionAsk = (AttachRequest, oneshot::Sender<Result<(), String>>);

/// The call's side of an attach stream.
pub struct Attached {
    pub frames: mpsc::Receiver<AttachFrame>,
    pub input: mpsc::Sender<AttachInput>,
    /// Holds the device's slot while the call lasts.
    pub slot: Slot,
}

/// One of a device's [`MAX_PER_DEVICE`] slots, freed when dropped.
pub struct Slot {
    active: std::sync::Arc<Mutex<HashMap<String, usize>>>,
    device: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = active.get_mut(&self.device) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.device);
            }
        }
    }
}

/// The device stream's side, handed to the task serving it.
pub struct DeviceSide {
    pub frames: mpsc::Sender<AttachFrame>,
    pub input: mpsc::Receiver<AttachInput>,
}

struct Pending {
    device: String,
    side: DeviceSide,
    opened: oneshot::Sender<()>,
}

#[derive(Default)]
pub struct AttachBroker {
    next_id: AtomicU64,
    next_session: AtomicU64,
    /// device → (session token, the session's request queue).
    sessions: Mutex<HashMap<String, (u64, mpsc::Sender<SessionAsk>)>>,
    pending: Mutex<HashMap<u64, Pending>>,
    active: std::sync::Arc<Mutex<HashMap<String, usize>>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AttachError {
    #[error("device {0} is not connected to this hub")]
    NotConnected(String),
    #[error("{0}")]
    Refused(String),
    #[error("device {0} did not open the stream within {1:?}")]
    TimedOut(String, Duration),
    #[error("device {0} already serves {MAX_PER_DEVICE} logs or exec streams: end one first")]
    Busy(String),
}

/// Unregisters a session's queue when the session ends (unless a newer session of the
/// same device replaced it).
pub struct Registration<'a> {
    broker: &'a AttachBroker,
    device: String,
    token: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut sessions = self.broker.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.get(&self.device).is_some_and(|(t, _)| *t == self.token) {
            sessions.remove(&self.device);
        }
    }
}

impl AttachBroker {
    /// A device's session is open: requests for it come out of the returned queue.
    pub fn register(&self, device: &str) -> (mpsc::Receiver<SessionAsk>, Registration<'_>) {
        let (tx, rx) = mpsc::channel(BUFFER);
        let token = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(device.to_string(), (token, tx));
        (rx, Registration { broker: self, device: device.to_string(), token })
    }

    pub fn is_connected(&self, device: &str) -> bool {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).contains_key(device)
    }

    /// Asks `device` for an attach stream and waits until it is open.
    pub async fn request(
        &self,
        device: &str,
        app: &str,
        container: &str,
        what: AttachKind,
    ) -> Result<Attached, AttachError> {
        let queue = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device)
            .map(|(_, q)| q.clone())
            .ok_or_else(|| AttachError::NotConnected(device.to_string()))?;
        let slot = {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            let n = active.entry(device.to_string()).or_default();
            if *n >= MAX_PER_DEVICE {
                return Err(AttachError::Busy(device.to_string()));
            }
            *n += 1;
            Slot { active: self.active.clone(), device: device.to_string() }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (frames_tx, frames_rx) = mpsc::channel(BUFFER);
        let (input_tx, input_rx) = mpsc::channel(BUFFER);
        let (opened_tx, opened_rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Pending {
                device: device.to_string(),
                side: DeviceSide { frames: frames_tx, input: input_rx },
                opened: opened_tx,
            },
        );
        let forget = || self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let req = AttachRequest { id, app: app.to_string(), container: container.to_string(), what };
        let (sent_tx, sent_rx) = oneshot::channel();
        if queue.send((req, sent_tx)).await.is_err() {
            forget();
            return Err(AttachError::NotConnected(device.to_string()));
        }
        match sent_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                forget();
                return Err(AttachError::Refused(why));
            }
            Err(_) => {
                forget();
                return Err(AttachError::NotConnected(device.to_string()));
            }
        }
        match tokio::time::timeout(OPEN_TIMEOUT, opened_rx).await {
            Ok(Ok(())) => Ok(Attached { frames: frames_rx, input: input_tx, slot }),
            _ => {
                forget();
                Err(AttachError::TimedOut(device.to_string(), OPEN_TIMEOUT))
            }
        }
    }

    /// `device` opened the stream of request `id`: its side, if the request is
    /// pending and was sent to that very device.
    pub fn arrived(&self, device: &str, id: u64) -> Option<DeviceSide> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.get(&id).is_none_or(|p| p.device != device) {
            return None;
        }
        let p = pending.remove(&id)?;
        let _ = p.opened.send(());
        Some(p.side)
    }
}

/// Serves a device's attach stream: its frames to the waiting call, the call's input
/// to it. Ends when either side does; a frame over the chunk limit or one that does not
/// decode is a protocol error.
pub async fn serve_stream<W>(
    broker: &AttachBroker,
    device: &str,
    version: u32,
    id: u64,
    mut decoder: shared_proto::wire::FrameDecoder,
    mut reads: mpsc::Receiver<super::session::Read>,
    mut writer: W,
) -> Result<(), super::SyncError>
where
    W: tokio::io::AsyncWrite + Unpin + Send,
{
    use super::session::Read;
    use shared_proto::wire::{self, MAX_ATTACH_CHUNK};
    use tokio::io::AsyncWriteExt;
    let Some(mut side) = broker.arrived(device, id) else {
        // Timed out, or never asked: nothing to pair it with.
        tracing::debug!(%device, id, "an attach stream nobody waits for");
        let _ = writer.shutdown().await;
        return Ok(());
    };
    let mut input_open = true;
    loop {
        while let Some(body) = decoder.next_body()? {
            let frame: AttachFrame = wire::decode_frame_body(&body)?;
            if let AttachFrame::Stdout(b) | AttachFrame::Stderr(b) = &frame
                && b.len() > MAX_ATTACH_CHUNK
            {
                return Err(super::SyncError::Protocol(format!("an attach chunk of {} bytes", b.len())));
            }
            let last = matches!(frame, AttachFrame::Exit { .. } | AttachFrame::Error { .. });
            if side.frames.send(frame).await.is_err() || last {
                let _ = writer.shutdown().await;
                return Ok(());
            }
        }
        tokio::select! {
            read = reads.recv() => match read {
                Some(Read::Bytes(b)) => decoder.push(&b),
                Some(Read::Eof) | None => {
                    if decoder.buffered() > 0 {
                        return Err(wire::FrameError::Truncated.into());
                    }
                    return Ok(());
                }
                Some(Read::Failed(e)) => return Err(e.into()),
            },
            input = side.input.recv(), if input_open => match input {
                Some(i) => {
                    let bytes = wire::encode_frame_for(version, &i)?;
                    writer.write_all(&bytes).await?;
                    writer.flush().await?;
                }
                // The call is over (the operator went away): so is the stream.
                None => {
                    input_open = false;
                    let _ = writer.shutdown().await;
                }
            },
            () = side.frames.closed() => {
                let _ = writer.shutdown().await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::wire::LogsRequest;

    #[tokio::test]
    async fn a_request_reaches_its_device_and_only_that_device_takes_it_up() {
        let broker = std::sync::Arc::new(AttachBroker::default());
        let b = broker.clone();
        let not_connected = b.request("pi", "web", "", AttachKind::Logs(LogsRequest::default())).await;
        assert_eq!(not_connected.err(), Some(AttachError::NotConnected("pi".into())));
        let (mut queue, _reg) = broker.register("pi");
        let call = tokio::spawn(async move {
            b.request("pi", "web", "c", AttachKind::Logs(LogsRequest::default())).await.map(|a| a.frames)
        });
        let (req, sent) = queue.recv().await.unwrap();
        assert_eq!((req.app.as_str(), req.container.as_str()), ("web", "c"));
        sent.send(Ok(())).unwrap();
        assert!(broker.arrived("other", req.id).is_none(), "another device cannot take it");
        let side = broker.arrived("pi", req.id).unwrap();
        assert!(broker.arrived("pi", req.id).is_none(), "taken once");
        side.frames.send(AttachFrame::Stdout(b"hi".to_vec())).await.unwrap();
        let mut frames = call.await.unwrap().unwrap();
        assert_eq!(frames.recv().await, Some(AttachFrame::Stdout(b"hi".to_vec())));
    }

    #[tokio::test]
    async fn a_refusal_and_a_replaced_session_are_reported() {
        let broker = std::sync::Arc::new(AttachBroker::default());
        let (mut queue, reg) = broker.register("pi");
        let b = broker.clone();
        let call =
            tokio::spawn(
                async move { b.request("pi", "web", "", AttachKind::Logs(Default::default())).await },
            );
        let (_, sent) = queue.recv().await.unwrap();
        sent.send(Err("too old".into())).unwrap();
        assert_eq!(call.await.unwrap().err(), Some(AttachError::Refused("too old".into())));
        // A newer session replaces the registration; the old one's end keeps it.
        let (_queue2, _reg2) = broker.register("pi");
        drop(reg);
        assert!(broker.is_connected("pi"));
        assert!(broker.pending.lock().unwrap().is_empty());
        assert!(broker.active.lock().unwrap().is_empty(), "slots freed with their calls");
    }

    #[tokio::test]
    async fn a_device_serves_a_bounded_number_of_streams_at_once() {
        let broker = std::sync::Arc::new(AttachBroker::default());
        let (mut queue, _reg) = broker.register("pi");
        let b = broker.clone();
        tokio::spawn(async move {
            // The device's sides, kept open.
            let mut sides = Vec::new();
            while let Some((req, sent)) = queue.recv().await {
                sent.send(Ok(())).unwrap();
                sides.extend(b.arrived("pi", req.id));
            }
        });
        let mut calls = Vec::new();
        for _ in 0..MAX_PER_DEVICE {
            calls.push(
                broker.request("pi", "web", "", AttachKind::Logs(Default::default())).await.ok().unwrap(),
            );
        }
        let busy = broker.request("pi", "web", "", AttachKind::Logs(Default::default())).await;
        assert_eq!(busy.err(), Some(AttachError::Busy("pi".into())));
        calls.pop();
        assert!(broker.request("pi", "web", "", AttachKind::Logs(Default::default())).await.is_ok());
    }
}
