//! The audit log: every mutating call (anything but GET and HEAD, plus exec and
//! backups, which are GETs) by a caller whose token checked out is written through
//! Raft once it has been answered: who (token id and role), what (method, path,
//! query), when, from where, and the status. It is written before the answer leaves,
//! so an answered call is never missing from it. Calls without a working token change
//! nothing and are only logged as lines, so a flood of them costs no Raft writes.
//!
//! A call that changes the store writes its entry in the same Raft entry as the change
//! ([`write_with_change`]: one commit, and the entry exists exactly when the change
//! does); any other call's entry is written after its answer. A call whose answer
//! differs from the one its change recorded (it failed after writing) gets a second
//! entry with the answer it got.
//!
//! The log keeps the newest [`MAX_ENTRIES`]; every [`TRIM_EVERY`] writes the oldest
//! beyond that go. `GET /api/v1/audit?since=…&limit=…` (admins) and `flotilla audit`
//! read it.

use super::HubState;
use super::auth::{Caller, authenticate};
use super::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use shared_proto::Timestamp;
use shared_proto::store::{AuditRecord, Object, Precondition, Role, StoreCommand, StoreKind, StoreOutcome};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Entries kept; older ones are trimmed.
pub const MAX_ENTRIES: usize = 50_000;
/// Trim once per this many entries written by this hub.
const TRIM_EVERY: u64 = 256;
/// Most entries one read returns.
const MAX_READ: usize = 10_000;

/// The client's address, put on every request by the connection that carried it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// The entry of the call being answered.
enum Pending {
    /// Not written yet.
    Entry(AuditRecord),
    /// Written with the call's change (recording the status in it).
    Written(AuditRecord),
}

tokio::task_local! {
    /// Set by [`record`] around the handler of an authenticated mutating call.
    static PENDING: std::cell::RefCell<Option<Pending>>;
}

/// Writes `cmd` for the call being answered, with the call's audit entry (recording
/// `status`, the answer the handler gives when `cmd` applies) in the same Raft entry.
/// Outside an audited call, or once its entry is written, `cmd` goes alone.
pub async fn write_with_change(
    state: &HubState,
    cmd: StoreCommand,
    status: axum::http::StatusCode,
) -> Result<StoreOutcome, hub_store::StoreError> {
    let entry = PENDING
        .try_with(|c| {
            let mut slot = c.borrow_mut();
            match slot.take() {
                Some(Pending::Entry(e)) => Some(e),
                other => {
                    *slot = other;
                    None
                }
            }
        })
        .ok()
        .flatten();
    let Some(mut entry) = entry else { return state.store.write(cmd).await };
    entry.status = status.as_u16();
    let audit = StoreCommand::put(Object::Audit(entry.clone()), Precondition::MustNotExist);
    let result = state.store.write(StoreCommand::Batch(vec![cmd, audit])).await;
    let written = matches!(result, Ok(StoreOutcome::Applied { .. }));
    // Not written: the middleware writes it after the answer (an entry that did land
    // with an ambiguous failure is not written twice: same id, must not exist).
    let back = if written { Pending::Written(entry) } else { Pending::Entry(entry) };
    let _ = PENDING.try_with(|c| *c.borrow_mut() = Some(back));
    if written {
        trim_now_and_then(state).await;
    }
    result
}

/// The name of an entry written at `at`: sorts by time, unique with the random tail.
pub fn entry_id(at: Timestamp) -> String {
    format!("{:016}-{}", at.millis(), crate::util::random_hex(4))
}

/// Middleware: answers the request, then records it if it could change anything.
pub async fn record(State(state): State<Arc<HubState>>, mut req: Request, next: Next) -> Response {
    // Exec is a GET (a WebSocket upgrade) that can change anything, and a backup a GET
    // that carries the fleet CA's key away: recorded too.
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && !req.uri().path().ends_with("/exec")
        && req.uri().path() != "/api/v1/backup"
    {
        return next.run(req).await;
    }
    let caller = authenticate(&state, req.headers());
    if let Ok(c) = &caller {
        // The handler's `Caller` extractor takes it from here instead of checking again.
        req.extensions_mut().insert(c.clone());
    }
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
    let remote = req.extensions().get::<ClientAddr>().map_or_else(String::new, |a| a.0.to_string());
    let Ok(Caller { token_id, role, .. }) = caller else {
        let response = next.run(req).await;
        let status = response.status().as_u16();
        tracing::info!(%remote, %method, %path, status, "refused a call without a working token");
        return response;
    };
    let at = state.clock.now();
    let entry = AuditRecord { id: entry_id(at), at, token_id, role, remote, method, path, status: 0 };
    let slot = std::cell::RefCell::new(Some(Pending::Entry(entry)));
    let (response, pending) = PENDING
        .scope(slot, async {
            let response = next.run(req).await;
            (response, PENDING.with(|c| c.borrow_mut().take()))
        })
        .await;
    let status = response.status().as_u16();
    let unwritten = match pending {
        Some(Pending::Entry(mut e)) => {
            e.status = status;
            Some(e)
        }
        Some(Pending::Written(e)) if e.status != status => {
            // Failed after its change was written: the answer it got, as well.
            let at = state.clock.now();
            Some(AuditRecord { id: entry_id(at), at, status, ..e })
        }
        Some(Pending::Written(_)) | None => None,
    };
    if let Some(entry) = unwritten
        && let Err(e) = write(&state, entry).await
    {
        tracing::error!(error = %e, "writing an audit entry failed");
    }
    response
}

async fn write(state: &HubState, entry: AuditRecord) -> Result<(), hub_store::StoreError> {
    state.store.write(StoreCommand::put(Object::Audit(entry), Precondition::MustNotExist)).await?;
    trim_now_and_then(state).await;
    Ok(())
}

/// Counts an entry written; trims the log once per [`TRIM_EVERY`].
async fn trim_now_and_then(state: &HubState) {
    if WRITTEN.fetch_add(1, Ordering::Relaxed) % TRIM_EVERY == TRIM_EVERY - 1
        && let Err(e) = trim(state).await
    {
        tracing::warn!(error = %e, "trimming the audit log failed");
    }
}

/// Deletes the oldest entries beyond [`MAX_ENTRIES`]. The count is the store's own (no
/// scan), and only the names to delete are read, without decoding the entries: decoding,
/// then counting, the whole log every few hundred writes was most of an API write's CPU
/// at high rates.
async fn trim(state: &HubState) -> Result<(), hub_store::StoreError> {
    let n = state.store.count_local(StoreKind::Audit)?;
    let excess = n.saturating_sub(MAX_ENTRIES);
    if excess == 0 {
        return Ok(());
    }
    // In key order, which is time order.
    let oldest = state.store.first_names_local(StoreKind::Audit, excess)?;
    for chunk in oldest.chunks(256) {
        let deletes = chunk
            .iter()
            .map(|name| StoreCommand::Delete {
                kind: StoreKind::Audit,
                name: name.clone(),
                precondition: Precondition::None,
            })
            .collect();
        state.store.write(StoreCommand::Each(deletes)).await?;
    }
    tracing::info!(removed = excess, kept = MAX_ENTRIES, "trimmed the audit log");
    Ok(())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// RFC 3339 time, or a duration back from now (`1h`, `7d`).
    #[serde(default)]
    pub since: Option<String>,
    /// Newest entries to return, at most 10,000 (default 1,000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `GET /api/v1/audit`: the newest entries since a time, oldest first.
pub async fn list(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let now = state.clock.now();
    let since = match q.since.as_deref() {
        None | Some("") => Timestamp(0),
        Some(s) => parse_since(s, now).ok_or_else(|| {
            ApiError::invalid("since", format!("{s:?} is neither an RFC 3339 time nor a duration like 1h"))
        })?,
    };
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_READ {
        return Err(ApiError::invalid("limit", format!("must be between 1 and {MAX_READ}")));
    }
    let entries: Vec<AuditRecord> = state
        .store
        .list(StoreKind::Audit)
        .await?
        .into_iter()
        .filter_map(|o| match o {
            Object::Audit(a) if a.at >= since => Some(a),
            _ => None,
        })
        .collect();
    let skip = entries.len().saturating_sub(limit);
    let items: Vec<Value> = entries[skip..]
        .iter()
        .map(|e| {
            json!({
                "id": e.id, "at": e.at, "tokenId": e.token_id, "role": e.role.to_string(),
                "remote": e.remote, "method": e.method, "path": e.path, "status": e.status,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items, "truncated": skip > 0 })))
}

fn parse_since(s: &str, now: Timestamp) -> Option<Timestamp> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Some(Timestamp::from_system_time(t));
    }
    let back = humantime::parse_duration(s).ok()?;
    let millis = u64::try_from(back.as_millis()).ok()?;
    Some(Timestamp(now.millis().saturating_sub(millis)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_sort_by_time_and_since_reads_times_and_durations() {
        assert!(entry_id(Timestamp(999)) < entry_id(Timestamp(1000)));
        assert!(entry_id(Timestamp(1000)) < entry_id(Timestamp(10_000_000_000_000)));
        let now = Timestamp(10_000_000);
        assert_eq!(parse_since("1h", now), Some(Timestamp(10_000_000 - 3_600_000)));
        assert_eq!(parse_since("1970-01-01T00:00:01Z", now), Some(Timestamp(1000)));
        assert_eq!(parse_since("yesterday-ish", now), None);
    }
}
