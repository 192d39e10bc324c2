//! The hub side of one agent's sync stream: hello, welcome, then desired manifests
//! pushed as they change and reports/heartbeats taken in. What to send is decided by
//! [`desired_frame`], a pure function of what the agent holds and what the store has.

use super::SyncError;
use crate::state::HubState;
use quinn::{RecvStream, SendStream};
use shared_proto::manifest::DesiredManifest;
use shared_proto::store::{Object, StoreKind};
use shared_proto::wire::{self, AgentFrame, AgentHello, HubFrame, HubWelcome};
use std::sync::Arc;

/// What to tell an agent that holds `held`, given the store's manifest for it.
/// Differences in either direction are sent: after a restore from backup the hub's
/// revision may be lower than what the agent holds, and the hub is the source of truth.
pub fn desired_frame(held: u64, manifest: Option<&DesiredManifest>, device: &str) -> HubFrame {
    match manifest {
        Some(m) if m.revision == held => HubFrame::UpToDate { revision: held },
        Some(m) => HubFrame::Desired(m.clone()),
        // No manifest yet (just enrolled, controllers not run): nothing to run.
        None if held == 0 => HubFrame::UpToDate { revision: 0 },
        None => HubFrame::Desired(DesiredManifest { device: device.to_string(), revision: 0, apps: vec![] }),
    }
}

fn current_manifest(state: &HubState, device: &str) -> Result<Option<DesiredManifest>, SyncError> {
    match state.store.get_local(StoreKind::Manifest, device)? {
        Some(Object::Manifest(m)) => Ok(Some(m)),
        _ => Ok(None),
    }
}

pub async fn serve(
    state: Arc<HubState>,
    device: String,
    hello: AgentHello,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), SyncError> {
    if hello.device != device {
        let msg = format!("hello names device {:?} but the certificate is for {device:?}", hello.device);
        wire::write_frame(&mut send, &HubFrame::Refused { message: msg.clone() }).await?;
        return Err(SyncError::Protocol(msg));
    }
    if state.store.get_local(StoreKind::Device, &device)?.is_none() {
        let msg = format!(
            "device {device:?} is not enrolled with this hub (deleted?): re-enrol it with a new token"
        );
        wire::write_frame(&mut send, &HubFrame::Refused { message: msg.clone() }).await?;
        let _ = send.finish();
        return Err(SyncError::Refused(msg));
    }
    let now = crate::util::now();
    let session = state.live.connected(&device, hello.facts.clone(), hello.held_revision, now);
    let mut reg = state.fanout.register(&device);
    let result = run(&state, &device, hello.held_revision, &mut reg.changes, &mut send, &mut recv).await;
    state.fanout.unregister(&device, reg.id);
    state.live.disconnected(&device, session, crate::util::now());
    result
}

async fn run(
    state: &HubState,
    device: &str,
    held: u64,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(), SyncError> {
    let welcome = HubWelcome {
        hub_version: env!("CARGO_PKG_VERSION").to_string(),
        heartbeat_interval_ms: u32::try_from(state.config.heartbeat_interval.as_millis()).unwrap_or(u32::MAX),
    };
    wire::write_frame(send, &HubFrame::Welcome(welcome)).await?;
    changes.mark_unchanged();
    let first = desired_frame(held, current_manifest(state, device)?.as_ref(), device);
    let mut sent = match &first {
        HubFrame::Desired(m) => m.revision,
        _ => held,
    };
    wire::write_frame(send, &first).await?;
    loop {
        tokio::select! {
            frame = wire::read_frame::<AgentFrame, _>(recv) => match frame? {
                Some(AgentFrame::Heartbeat { .. }) => state.live.heartbeat(device, crate::util::now()),
                Some(AgentFrame::Report(r)) => {
                    if r.containers.len() > 1024 {
                        return Err(SyncError::Protocol("report lists more than 1024 containers".into()));
                    }
                    state.live.report(device, r.held_revision, r.containers, crate::util::now());
                }
                None => return Ok(()),
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    // Replaced by a newer session of the same device.
                    return Ok(());
                }
                if let Some(m) = current_manifest(state, device)?
                    && m.revision != sent
                {
                    sent = m.revision;
                    wire::write_frame(send, &HubFrame::Desired(m)).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rev: u64) -> DesiredManifest {
        DesiredManifest { device: "pi".into(), revision: rev, apps: vec![] }
    }

    #[test]
    fn sends_only_what_the_agent_lacks() {
        assert_eq!(desired_frame(5, Some(&m(5)), "pi"), HubFrame::UpToDate { revision: 5 });
        assert_eq!(desired_frame(4, Some(&m(5)), "pi"), HubFrame::Desired(m(5)));
        assert_eq!(desired_frame(9, Some(&m(5)), "pi"), HubFrame::Desired(m(5)), "restored hub wins");
        assert_eq!(desired_frame(0, None, "pi"), HubFrame::UpToDate { revision: 0 });
        assert_eq!(desired_frame(3, None, "pi"), HubFrame::Desired(m(0)));
    }
}
