//! `GET /api/v1/<kind>?watch=true`: changes as Server-Sent Events, in revision order, each
//! exactly once, from this hub's history window (`hub_store::history`), which every hub keeps
//! alike because every hub applies the same log. A watch therefore runs on any hub, leader or
//! not, and a client that loses its hub resumes on another with `Last-Event-ID`.
//!
//! Each event: `id:` the revision (`R:i` for an event that more of the same revision follow,
//! so a resume never repeats or skips half a revision), `event:` ADDED, MODIFIED, DELETED or
//! BOOKMARK, `data:` `{"type", "revision", "object"}` with the object as the list shows it.
//! BOOKMARK events (no object) move the client's resume point past revisions with nothing
//! for it, so a quiet, filtered watch does not fall out of the window. Comments keep proxies
//! from closing an idle stream.
//!
//! Nothing waits on a watcher: the stream reads the shared window only when the client takes
//! more, holding at most one page of events. A client that reads slower than the store
//! changes falls out of the window and gets an ERROR event (410, list again) and the end of
//! the stream.

use super::HubState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::query::{ListQuery, WatchCursor, watcher_view};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared_proto::Kind;
use shared_proto::store::{Object, StoreKind};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Revisions read from the window at a time: the most one watcher holds.
const PAGE_REVISIONS: usize = 64;
/// A comment this often when nothing else is sent.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// A BOOKMARK at most this often, when revisions went by with nothing for the watcher.
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

struct Watcher {
    state: Arc<HubState>,
    caller: Caller,
    kind: StoreKind,
    query: ListQuery,
    cursor: WatchCursor,
    /// The id of the last event sent (its revision, fully delivered).
    last_sent: u64,
    last_sent_at: Instant,
    applied: tokio::sync::watch::Receiver<u64>,
    pending: VecDeque<Event>,
    ended: bool,
}

/// Starts a watch; answers 410 at once when the cursor is already out of the window.
pub fn serve(
    state: Arc<HubState>,
    caller: Caller,
    kind: Kind,
    query: ListQuery,
    last_event_id: Option<&str>,
) -> ApiResult<Response> {
    let cursor = match last_event_id {
        Some(id) => WatchCursor::parse_event_id(id)?,
        None => WatchCursor::after(query.since_revision.unwrap_or_else(|| state.store.revision())),
    };
    state.store.history_after(cursor.done, 0)?;
    let applied = state.store.applied();
    let watcher = Watcher {
        state,
        caller,
        kind: kind.into(),
        query,
        cursor,
        last_sent: cursor.done,
        last_sent_at: Instant::now(),
        applied,
        pending: VecDeque::new(),
        ended: false,
    };
    let stream = futures::stream::unfold(watcher, |mut w| async move {
        let event = w.next_event().await?;
        Some((Ok::<_, Infallible>(event), w))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")).into_response())
}

impl Watcher {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            // Mark what is seen before reading, so a revision applied in between wakes us.
            self.applied.mark_unchanged();
            match self.state.store.history_after(self.cursor.done, PAGE_REVISIONS) {
                Ok(page) => {
                    for entry in &page.entries {
                        self.queue_revision(entry.revision, &entry.events);
                    }
                    self.cursor = WatchCursor::after(page.through);
                    if !self.pending.is_empty() {
                        continue;
                    }
                }
                Err(e) => {
                    self.end_with(ApiError::from(e));
                    continue;
                }
            }
            let bookmark_at = self.last_sent_at + BOOKMARK_EVERY;
            if self.cursor.done > self.last_sent && Instant::now() >= bookmark_at {
                let revision = self.cursor.done;
                self.sent(revision);
                return Some(
                    Event::default()
                        .id(revision.to_string())
                        .event("BOOKMARK")
                        .data(json!({ "type": "BOOKMARK", "revision": revision }).to_string()),
                );
            }
            let wait = if self.cursor.done > self.last_sent { Some(bookmark_at) } else { None };
            tokio::select! {
                changed = self.applied.changed() => {
                    if changed.is_err() {
                        self.end_with(ApiError::Unavailable("the hub is shutting down: watch another hub".into()));
                    }
                }
                _ = sleep_until(wait) => {}
            }
        }
    }

    /// Queues this watcher's events of one revision, leaving out those already delivered.
    fn queue_revision(&mut self, revision: u64, events: &[hub_store::WatchEvent]) {
        let scope = &self.caller.scope;
        let query = &self.query;
        let sees = |o: &Object| scope.sees(o) && query.matches(o);
        let views: Vec<_> = events
            .iter()
            .filter(|e| e.kind == self.kind)
            .filter_map(|e| watcher_view(e.object.as_ref(), e.previous.as_ref(), sees))
            .collect();
        let skip = match self.cursor.partial {
            Some((r, n)) if r == revision => n,
            _ => 0,
        };
        let n = views.len();
        for (idx, (kind, object)) in views.into_iter().enumerate().skip(skip) {
            let mut object = Object::clone(&object);
            super::objects::overlay(&self.state, &mut object);
            let data = json!({ "type": kind.as_str(), "revision": revision, "object": super::objects::to_json(&object) });
            self.pending.push_back(
                Event::default()
                    .id(WatchCursor::event_id(revision, idx, n))
                    .event(kind.as_str())
                    .data(data.to_string()),
            );
        }
        if n > skip {
            self.sent(revision);
        }
    }

    fn sent(&mut self, revision: u64) {
        self.last_sent = revision;
        self.last_sent_at = Instant::now();
    }

    fn end_with(&mut self, error: ApiError) {
        self.ended = true;
        self.pending.push_back(Event::default().event("ERROR").data(error.body().to_string()));
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
