//! The bounded window of recent changes every hub keeps in memory, fed by its own state
//! machine, for watches that start or resume at a past revision and for list pages read at a
//! past revision.
//!
//! Every hub applies the same log, so every hub's window holds the same changes at the same
//! revisions (the Raft log indexes): a watch can move from one hub to another and resume where
//! it left off, as long as the new hub's window still reaches back that far.
//!
//! The invariant: with `floor` and `head` as kept here, every change to an API kind (sites,
//! devices, apps, images, configs, secrets) with a revision in `(floor, head]` is in the
//! window, in revision order, with the object before the change (`previous`). Nothing at or
//! below `floor` can be served; a cursor below it gets [`Compacted`]. `floor` moves up when the
//! window is full (oldest revision first), when the hub starts (the window starts at the
//! revision it opened at: nothing earlier was seen), and when a snapshot from the leader
//! replaces the whole state (which carries no history).
//!
//! Pure: no locks, no clock. [`crate::state_machine::Publisher`] owns one behind its lock.

use shared_proto::store::{Object, StoreKind};
use std::collections::VecDeque;
use std::sync::Arc;

/// Whether the store keeps history for `kind`: the kinds the API lists and watches. The
/// controllers' manifests, tokens and audit entries are left out, so they cannot push the
/// operators' changes out of the window.
pub fn is_watched_kind(kind: StoreKind) -> bool {
    matches!(
        kind,
        StoreKind::Site
            | StoreKind::Device
            | StoreKind::App
            | StoreKind::Image
            | StoreKind::Config
            | StoreKind::Secret
    )
}

/// One key's change at one revision, with what it replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    pub kind: StoreKind,
    pub name: String,
    /// The object as stored after the change; `None` when it was deleted.
    pub object: Option<Arc<Object>>,
    /// The object before the change; `None` when it was created.
    pub previous: Option<Arc<Object>>,
}

/// Every watched change of one log entry (one event per key, ordered by key).
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionEvents {
    pub revision: u64,
    pub events: Vec<WatchEvent>,
}

/// How much history a hub keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most revisions with watched changes kept.
    pub max_revisions: usize,
    /// Most bytes of objects (encoded size, before and after each change) kept.
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits { max_revisions: 10_000, max_bytes: 64 << 20 }
    }
}

/// A cursor older than the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub requested: u64,
    /// The oldest cursor still served: changes after it are all kept.
    pub floor: u64,
}

/// The answer to [`History::read_after`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// Revisions after the cursor with watched changes, oldest first.
    pub entries: Vec<Arc<RevisionEvents>>,
    /// Everything up to this revision is accounted for: a watcher may move its cursor here
    /// (it is at least the cursor asked with).
    pub through: u64,
}

#[derive(Debug)]
pub(crate) struct History {
    limits: HistoryLimits,
    floor: u64,
    head: u64,
    entries: VecDeque<(Arc<RevisionEvents>, usize)>,
    n_bytes: usize,
}

impl History {
    /// A window that starts empty at `revision`.
    pub(crate) fn new(revision: u64, limits: HistoryLimits) -> History {
        History { limits, floor: revision, head: revision, entries: VecDeque::new(), n_bytes: 0 }
    }

    #[cfg(test)]
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    #[cfg(test)]
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Records the watched changes of `events.revision`, whose objects encode to about
    /// `n_bytes`. Revisions arrive in increasing order; an older one (a replay) is ignored.
    pub(crate) fn push(&mut self, events: RevisionEvents, n_bytes: usize) {
        if events.revision <= self.head {
            return;
        }
        self.head = events.revision;
        if events.events.is_empty() {
            return;
        }
        self.entries.push_back((Arc::new(events), n_bytes));
        self.n_bytes += n_bytes;
        while self.entries.len() > self.limits.max_revisions.max(1)
            || (self.n_bytes > self.limits.max_bytes && self.entries.len() > 1)
        {
            let Some((oldest, size)) = self.entries.pop_front() else { break };
            self.n_bytes -= size;
            self.floor = oldest.revision;
        }
    }

    /// Everything up to `revision` was applied (entries with nothing watched included).
    pub(crate) fn advance(&mut self, revision: u64) {
        self.head = self.head.max(revision);
    }

    /// The whole state was replaced at `revision` (a snapshot was installed): what happened
    /// before it is not known to this hub.
    pub(crate) fn reset(&mut self, revision: u64) {
        self.entries.clear();
        self.n_bytes = 0;
        self.floor = revision.max(self.floor);
        self.head = self.floor.max(self.head);
    }

    /// The first `max` revisions with watched changes after `cursor`.
    pub(crate) fn read_after(&self, cursor: u64, max: usize) -> Result<HistoryPage, Compacted> {
        if cursor < self.floor {
            return Err(Compacted { requested: cursor, floor: self.floor });
        }
        let start = self.entries.partition_point(|(e, _)| e.revision <= cursor);
        let entries: Vec<_> = self.entries.iter().skip(start).take(max).map(|(e, _)| e.clone()).collect();
        let truncated = self.entries.len() - start > entries.len();
        let through = match entries.last() {
            Some(last) if truncated => last.revision,
            _ => self.head.max(cursor),
        };
        Ok(HistoryPage { entries, through })
    }

    /// The revisions in `(after, through]`, or why they are not all kept.
    pub(crate) fn between(&self, after: u64, through: u64) -> Result<Vec<Arc<RevisionEvents>>, Compacted> {
        if after < self.floor {
            return Err(Compacted { requested: after, floor: self.floor });
        }
        let start = self.entries.partition_point(|(e, _)| e.revision <= after);
        Ok(self
            .entries
            .iter()
            .skip(start)
            .take_while(|(e, _)| e.revision <= through)
            .map(|(e, _)| e.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared_proto::{ObjectMeta, Site, SiteSpec};

    fn site(name: &str) -> Arc<Object> {
        Arc::new(Object::Site(Site::new(ObjectMeta::named(name), SiteSpec::default())))
    }

    fn rev(revision: u64) -> RevisionEvents {
        RevisionEvents {
            revision,
            events: vec![WatchEvent {
                kind: StoreKind::Site,
                name: format!("s{revision}"),
                object: Some(site(&format!("s{revision}"))),
                previous: None,
            }],
        }
    }

    fn revisions(page: &HistoryPage) -> Vec<u64> {
        page.entries.iter().map(|e| e.revision).collect()
    }

    #[test]
    fn reads_after_a_cursor_and_says_how_far_it_is_complete() {
        let mut h = History::new(3, HistoryLimits { max_revisions: 10, max_bytes: 1 << 20 });
        for r in [4, 6, 7] {
            h.push(rev(r), 10);
        }
        h.advance(9);
        let page = h.read_after(3, 10).unwrap();
        assert_eq!((revisions(&page), page.through), (vec![4, 6, 7], 9));
        let page = h.read_after(4, 1).unwrap();
        assert_eq!((revisions(&page), page.through), (vec![6], 6), "truncated: complete only to 6");
        let page = h.read_after(12, 10).unwrap();
        assert_eq!((revisions(&page), page.through), (vec![], 12), "a cursor ahead of this hub waits");
        assert_eq!(h.read_after(2, 10), Err(Compacted { requested: 2, floor: 3 }), "before the start");
    }

    #[test]
    fn the_window_drops_the_oldest_by_count_and_by_bytes() {
        let mut h = History::new(0, HistoryLimits { max_revisions: 3, max_bytes: 100 });
        for r in 1..=5 {
            h.push(rev(r), 10);
        }
        assert_eq!((h.floor(), h.head()), (2, 5));
        assert!(h.read_after(1, 10).is_err());
        assert_eq!(revisions(&h.read_after(2, 10).unwrap()), vec![3, 4, 5]);
        h.push(rev(6), 95);
        assert_eq!(revisions(&h.read_after(5, 10).unwrap()), vec![6]);
        assert_eq!(h.floor(), 5, "only the newest fits the byte budget");
        // A replay of an applied revision changes nothing.
        h.push(rev(6), 95);
        assert_eq!(revisions(&h.read_after(5, 10).unwrap()), vec![6]);
    }

    #[test]
    fn a_snapshot_resets_the_window() {
        let mut h = History::new(0, HistoryLimits::default());
        h.push(rev(1), 1);
        h.push(rev(2), 1);
        h.reset(40);
        assert_eq!(h.read_after(2, 10), Err(Compacted { requested: 2, floor: 40 }));
        assert_eq!(h.read_after(40, 10).unwrap().through, 40);
        assert!(h.between(39, 40).is_err());
        h.push(rev(41), 1);
        assert_eq!(h.between(40, 41).unwrap().len(), 1);
    }

    proptest! {
        /// Whatever was pushed and however small the window, a read after any cursor at or
        /// above the floor returns exactly the pushed revisions after it, in order; and
        /// following `through` page by page sees each exactly once.
        #[test]
        fn reads_are_exact_above_the_floor(
            gaps in proptest::collection::vec(1u64..4, 0..60),
            max_revisions in 1usize..20,
            page in 1usize..7,
        ) {
            let mut h = History::new(0, HistoryLimits { max_revisions, max_bytes: usize::MAX });
            let mut pushed = Vec::new();
            let mut r = 0;
            for g in gaps {
                r += g;
                h.push(rev(r), 1);
                pushed.push(r);
            }
            for cursor in 0..=r + 1 {
                match h.read_after(cursor, usize::MAX) {
                    Ok(p) => {
                        let want: Vec<u64> = pushed.iter().copied().filter(|x| *x > cursor).collect();
                        prop_assert_eq!(revisions(&p), want);
                        prop_assert!(cursor >= h.floor());
                    }
                    Err(c) => prop_assert!(cursor < c.floor),
                }
            }
            let mut cursor = h.floor();
            let mut seen = Vec::new();
            loop {
                let p = h.read_after(cursor, page).unwrap();
                prop_assert!(p.through >= cursor);
                if p.entries.is_empty() {
                    break;
                }
                seen.extend(revisions(&p));
                cursor = p.through;
            }
            let want: Vec<u64> = pushed.iter().copied().filter(|x| *x > h.floor()).collect();
            prop_assert_eq!(seen, want);
        }
    }
}
