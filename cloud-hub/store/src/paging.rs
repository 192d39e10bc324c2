//! Lists read a page at a time at one revision ([`Store::list_page`]): the current state
//! from redb, with the changes made since the list's revision undone from the history window.

use crate::db::{DbError, KEY_APPLIED, OBJECTS, SM_META, begin_read, read_record};
use crate::store::{compacted, decode_stored};
use crate::types::LogId;
use crate::{ListPage, PageRequest, Store, StoreError};
use shared_proto::store::{Object, StoreKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a list page waits for the history window to catch up with the revision its read
/// transaction saw (publishing follows the commit by microseconds), or for this hub to apply
/// the revision a page was started at on another hub.
const PAGE_CATCH_UP_WAIT: Duration = Duration::from_secs(5);

impl Store {
    /// One page of the objects of `kind` that pass `filter`, sorted by name, all read as of one
    /// revision: the first page (no `at`) is a linearizable read of the current state and sets
    /// the revision; later pages read the list as it was at that revision, by undoing from the
    /// current state the changes made since, which the history window keeps. So pages never
    /// show an object twice or miss one that existed at the revision, however the store
    /// changes between them. A page whose revision has left the window answers
    /// [`StoreError::Compacted`]: start the list again.
    ///
    /// Only the watched kinds have history; other kinds can be read in one page only.
    pub async fn list_page(
        &self,
        kind: StoreKind,
        request: &PageRequest,
        mut filter: impl FnMut(&Object) -> bool,
    ) -> Result<ListPage, StoreError> {
        match request.at {
            None => self.read_barrier().await?,
            Some(at) => {
                if !crate::is_watched_kind(kind) {
                    return Err(StoreError::Rejected(format!(
                        "{kind} lists have no history to page through"
                    )));
                }
                self.wait_applied(at).await?;
            }
        }
        let db = self.db()?;
        let txn = begin_read(&db)?;
        let applied = {
            let meta = txn.open_table(SM_META).map_err(DbError::from)?;
            let applied: Option<Option<LogId>> = read_record(&meta, KEY_APPLIED, "last applied log id")?;
            applied.flatten().map_or(0, |id| id.index)
        };
        let at = request.at.unwrap_or(applied);
        // What the names this page may show looked like at `at`, for those changed since.
        let mut then: BTreeMap<String, Option<Arc<Object>>> = BTreeMap::new();
        if at < applied {
            self.wait_applied(applied).await?;
            let entries = self.inner.publisher.with_history(|h| h.between(at, applied)).map_err(compacted)?;
            for entry in &entries {
                for event in entry.events.iter().filter(|e| e.kind == kind) {
                    if request.after.as_ref().is_none_or(|after| event.name > *after) {
                        then.entry(event.name.clone()).or_insert_with(|| event.previous.clone());
                    }
                }
            }
        }
        let objects = txn.open_table(OBJECTS).map_err(DbError::from)?;
        let prefix = kind.prefix();
        let end = format!("{}0", kind.as_str());
        let start = match &request.after {
            Some(after) => kind.key(after),
            None => prefix.clone(),
        };
        let mut now = objects.range(start.as_str()..end.as_str()).map_err(DbError::from)?.peekable();
        let mut then = then.into_iter().peekable();
        let limit = request.limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        loop {
            // The next name in either the current state or the changed names, whichever is first.
            let now_name = match now.peek() {
                Some(Ok((key, _))) => Some(key.value()[prefix.len()..].to_string()),
                Some(Err(_)) => match now.next() {
                    Some(Err(e)) => return Err(DbError::from(e).into()),
                    _ => unreachable!("peeked an error"),
                },
                None => None,
            };
            if now_name.is_some() && now_name.as_deref() == request.after.as_deref() {
                now.next();
                continue;
            }
            let then_name = then.peek().map(|(name, _)| name.clone());
            let object = match (now_name, then_name) {
                (None, None) => break,
                (Some(n), Some(t)) if t <= n => {
                    if t == n {
                        now.next();
                    }
                    then.next().expect("peeked").1.map(Arc::unwrap_or_clone)
                }
                (None, Some(_)) => then.next().expect("peeked").1.map(Arc::unwrap_or_clone),
                (Some(_), _) => {
                    let (key, value) = now.next().expect("peeked").map_err(DbError::from)?;
                    Some(decode_stored(key.value(), value.value().2)?)
                }
            };
            if let Some(object) = object.filter(|o| filter(o)) {
                items.push(object);
                if items.len() >= limit {
                    break;
                }
            }
        }
        let more = now.peek().is_some() || then.peek().is_some();
        let next_after = match items.last() {
            Some(last) if more && items.len() >= limit => Some(last.name().to_string()),
            _ => None,
        };
        Ok(ListPage { revision: at, items, next_after })
    }

    /// Waits (bounded) until this hub has applied `revision` and published it to watchers.
    async fn wait_applied(&self, revision: u64) -> Result<(), StoreError> {
        let mut applied = self.applied();
        match tokio::time::timeout(PAGE_CATCH_UP_WAIT, applied.wait_for(|r| *r >= revision)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Unavailable("the store is shutting down".to_string())),
            Err(_) => Err(StoreError::Unavailable(format!(
                "this hub has not applied revision {revision} yet (it is at {}): retry",
                self.revision()
            ))),
        }
    }
}
