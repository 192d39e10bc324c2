//! The frames whose shape changed in protocol version 4, as versions 1 to 3 wrote
//! them: the manifest a hub pushes and the report an agent sends moved to manifest
//! shape 2 ([`crate::manifest::v1`] holds shape 1). Never edit.

use crate::manifest::v1::{DesiredManifest, ObservedContainer};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub(super) enum HubFrame {
    Welcome(super::HubWelcome),
    Desired(DesiredManifest),
    UpToDate { revision: u64 },
    Refused { message: String },
    RetryAfter { after_ms: u32, message: String },
    Renew { reason: String },
    Trust { ca_der: Vec<Vec<u8>> },
}

#[derive(Serialize, Deserialize)]
pub(super) struct AgentReport {
    held_revision: u64,
    containers: Vec<ObservedContainer>,
}

#[derive(Serialize, Deserialize)]
pub(super) enum AgentFrame {
    Report(AgentReport),
    Heartbeat { seq: u64 },
}

impl From<HubFrame> for super::HubFrame {
    fn from(f: HubFrame) -> Self {
        match f {
            HubFrame::Welcome(w) => super::HubFrame::Welcome(w),
            HubFrame::Desired(m) => super::HubFrame::Desired(m.into()),
            HubFrame::UpToDate { revision } => super::HubFrame::UpToDate { revision },
            HubFrame::Refused { message } => super::HubFrame::Refused { message },
            HubFrame::RetryAfter { after_ms, message } => super::HubFrame::RetryAfter { after_ms, message },
            HubFrame::Renew { reason } => super::HubFrame::Renew { reason },
            HubFrame::Trust { ca_der } => super::HubFrame::Trust { ca_der },
        }
    }
}

impl From<&super::HubFrame> for HubFrame {
    fn from(f: &super::HubFrame) -> Self {
        match f.clone() {
            super::HubFrame::Welcome(w) => HubFrame::Welcome(w),
            super::HubFrame::Desired(m) => HubFrame::Desired((&m).into()),
            super::HubFrame::UpToDate { revision } => HubFrame::UpToDate { revision },
            super::HubFrame::Refused { message } => HubFrame::Refused { message },
            super::HubFrame::RetryAfter { after_ms, message } => HubFrame::RetryAfter { after_ms, message },
            super::HubFrame::Renew { reason } => HubFrame::Renew { reason },
            super::HubFrame::Trust { ca_der } => HubFrame::Trust { ca_der },
            // The hub never asks an agent older than version 5 (`HubSession::attach`).
            super::HubFrame::Attach(_) | super::HubFrame::Peers(_) => {
                HubFrame::Refused { message: "logs and exec need an agent of protocol version 5".into() }
            }
            // Never sent to an agent older than version 6 (`HubSession::send_hubs`).
            super::HubFrame::Hubs(_) => {
                HubFrame::Refused { message: "hub clusters need an agent of protocol version 6".into() }
            }
        }
    }
}

impl From<AgentFrame> for super::AgentFrame {
    fn from(f: AgentFrame) -> Self {
        match f {
            AgentFrame::Report(r) => super::AgentFrame::Report(super::AgentReport {
                held_revision: r.held_revision,
                containers: r.containers.into_iter().map(Into::into).collect(),
            }),
            AgentFrame::Heartbeat { seq } => super::AgentFrame::Heartbeat { seq },
        }
    }
}

impl From<&super::AgentFrame> for AgentFrame {
    fn from(f: &super::AgentFrame) -> Self {
        match f {
            super::AgentFrame::Report(r) => AgentFrame::Report(AgentReport {
                held_revision: r.held_revision,
                containers: r.containers.iter().map(Into::into).collect(),
            }),
            super::AgentFrame::Heartbeat { seq } => AgentFrame::Heartbeat { seq: *seq },
            // An older hub has no place for usage; the agent sends none to it, and
            // were one written it would read as what it costs: proof of life.
            super::AgentFrame::Usage(_) | super::AgentFrame::Addresses(_) => AgentFrame::Heartbeat { seq: 0 },
        }
    }
}
