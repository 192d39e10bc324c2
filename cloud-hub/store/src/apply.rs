//! The store's state machine semantics as one pure function: given how to look up a key's
//! current revisions, a command and its log index, what to write and what to answer.
//!
//! Every replica runs exactly this on exactly the same inputs, so it must be deterministic:
//! no clocks, no randomness, no iteration over unordered collections.

use shared_proto::store::{Object, Precondition, StoreCommand, StoreKind, StoreOutcome};
use std::collections::BTreeMap;

/// The revisions the store keeps for every key, whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyRevisions {
    /// Log index of the last write to the key.
    pub mod_revision: u64,
    /// Log index of the write that created this incarnation of the key.
    pub create_revision: u64,
}

/// One key's net change after a whole command (a batch may touch a key several times).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeyWrite {
    /// Store `object`, already stamped with `revisions`.
    Put {
        key: String,
        revisions: KeyRevisions,
        object: Box<Object>,
    },
    Delete {
        key: String,
        kind: StoreKind,
        name: String,
    },
}

/// What applying one command produced: the answer, and the writes (none unless applied).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Applied {
    pub outcome: StoreOutcome,
    /// Net writes, ordered by key.
    pub writes: Vec<KeyWrite>,
}

/// A key as this command sees it: what the store held before the command, and what the
/// command's earlier steps made of it.
struct Slot {
    kind: StoreKind,
    name: String,
    /// Revisions in the store, before this command.
    before: Option<KeyRevisions>,
    /// Revisions as seen by the next step of this command.
    current: Option<KeyRevisions>,
    /// The object the last put of this command wrote, if the key is present because of it.
    written: Option<Box<Object>>,
}

struct Conflict {
    kind: StoreKind,
    name: String,
}

/// Evaluates `cmd` as the entry at log `index`.
///
/// `lookup` returns the stored revisions of a key; it is called at most once per key. A
/// `Batch` is all or nothing: later steps see the effects of earlier ones, and the first failed
/// precondition discards every step. A conflict reports the key's revision in the store, which
/// is unchanged because nothing applied.
///
/// An `Each` applies its commands one after the other, each all or nothing on its own: a
/// failed precondition skips that command only, later ones see the effects of earlier ones
/// that applied, and the outcome lists one result per command. (An `Each` nested inside
/// another command counts as a `Batch`.)
pub(crate) fn apply_command<E>(
    mut lookup: impl FnMut(&str) -> Result<Option<KeyRevisions>, E>,
    cmd: &StoreCommand,
    index: u64,
) -> Result<Applied, E> {
    let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
    let outcome = match cmd {
        StoreCommand::Each(cmds) => {
            let mut outcomes = Vec::with_capacity(cmds.len());
            for cmd in cmds {
                // Run the command against its own slots, which read through to the slots
                // of the commands before it; merge them only if it applied.
                let mut own: BTreeMap<String, Slot> = BTreeMap::new();
                let conflict = {
                    let mut read_through = |key: &str| match slots.get(key) {
                        Some(s) => Ok(s.current),
                        None => lookup(key),
                    };
                    step(&mut read_through, &mut own, cmd, index)?
                };
                match conflict {
                    Some(c) => {
                        let key = c.kind.key(&c.name);
                        let current_revision = own.get(&key).and_then(|s| s.before).map(|r| r.mod_revision);
                        outcomes.push(StoreOutcome::Conflict {
                            kind: c.kind,
                            name: c.name,
                            current_revision,
                        });
                        // Keep what was looked up (so no key is looked up twice), not what
                        // the failed command would have written.
                        for (key, mut slot) in own {
                            slot.current = slot.before;
                            slot.written = None;
                            slots.entry(key).or_insert(slot);
                        }
                    }
                    None => {
                        for (key, slot) in own {
                            match slots.get_mut(&key) {
                                Some(outer) => {
                                    outer.current = slot.current;
                                    outer.written = slot.written;
                                }
                                None => {
                                    slots.insert(key, slot);
                                }
                            }
                        }
                        outcomes.push(StoreOutcome::Applied { revision: index });
                    }
                }
            }
            StoreOutcome::Each(outcomes)
        }
        _ => {
            if let Some(conflict) = step(&mut lookup, &mut slots, cmd, index)? {
                let key = conflict.kind.key(&conflict.name);
                let current_revision = slots.get(&key).and_then(|s| s.before).map(|r| r.mod_revision);
                let outcome =
                    StoreOutcome::Conflict { kind: conflict.kind, name: conflict.name, current_revision };
                return Ok(Applied { outcome, writes: Vec::new() });
            }
            StoreOutcome::Applied { revision: index }
        }
    };
    let writes = slots
        .into_iter()
        .filter_map(|(key, slot)| match (slot.before, slot.current, slot.written) {
            (_, Some(revisions), Some(object)) => Some(KeyWrite::Put { key, revisions, object }),
            (Some(_), None, _) => Some(KeyWrite::Delete { key, kind: slot.kind, name: slot.name }),
            // Absent before and after (e.g. deleting a missing key): nothing changes.
            (None, None, _) => None,
            // Looked up but not written: every successful step writes, so this is unreachable,
            // and writing nothing is the right answer anyway.
            (_, Some(_), None) => None,
        })
        .collect();
    Ok(Applied { outcome, writes })
}

fn step<E>(
    lookup: &mut impl FnMut(&str) -> Result<Option<KeyRevisions>, E>,
    slots: &mut BTreeMap<String, Slot>,
    cmd: &StoreCommand,
    index: u64,
) -> Result<Option<Conflict>, E> {
    match cmd {
        StoreCommand::Put { object, precondition } => {
            let (kind, name) = (object.kind(), object.name().to_string());
            let slot = slot(lookup, slots, kind, &name)?;
            if !holds(*precondition, slot.current) {
                return Ok(Some(Conflict { kind, name }));
            }
            let create_revision = slot.current.map_or(index, |r| r.create_revision);
            let revisions = KeyRevisions { mod_revision: index, create_revision };
            let mut object = object.clone();
            object.stamp(revisions.mod_revision, revisions.create_revision);
            slot.current = Some(revisions);
            slot.written = Some(object);
            Ok(None)
        }
        StoreCommand::Delete { kind, name, precondition } => {
            let slot = slot(lookup, slots, *kind, name)?;
            if !holds(*precondition, slot.current) {
                return Ok(Some(Conflict { kind: *kind, name: name.clone() }));
            }
            slot.current = None;
            slot.written = None;
            Ok(None)
        }
        StoreCommand::Batch(cmds) | StoreCommand::Each(cmds) => {
            for cmd in cmds {
                if let Some(conflict) = step(lookup, slots, cmd, index)? {
                    return Ok(Some(conflict));
                }
            }
            Ok(None)
        }
    }
}

/// The slot of `kind/name`, looking the key up in the store the first time it is touched.
fn slot<'s, E>(
    lookup: &mut impl FnMut(&str) -> Result<Option<KeyRevisions>, E>,
    slots: &'s mut BTreeMap<String, Slot>,
    kind: StoreKind,
    name: &str,
) -> Result<&'s mut Slot, E> {
    let key = kind.key(name);
    if !slots.contains_key(&key) {
        let before = lookup(&key)?;
        slots.insert(
            key.clone(),
            Slot { kind, name: name.to_string(), before, current: before, written: None },
        );
    }
    Ok(slots.get_mut(&key).expect("slot was inserted above"))
}

fn holds(precondition: Precondition, current: Option<KeyRevisions>) -> bool {
    match precondition {
        Precondition::None => true,
        Precondition::MustNotExist => current.is_none(),
        Precondition::MustExist => current.is_some(),
        Precondition::RevisionIs(r) => current.is_some_and(|c| c.mod_revision == r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::store::{EnrolmentTokenRecord, Precondition as P};
    use shared_proto::{ObjectMeta, Site, SiteSpec, Timestamp};
    use std::convert::Infallible;

    fn site(name: &str) -> Object {
        Object::Site(Site::new(ObjectMeta::named(name), SiteSpec::default()))
    }

    fn token(id: &str) -> Object {
        Object::EnrolmentToken(EnrolmentTokenRecord {
            id: id.to_string(),
            secret_sha256: "00".repeat(32),
            created_at: Timestamp(1),
            expires_at: Timestamp(2),
            max_uses: None,
            n_used: 0,
            labels: BTreeMap::new(),
            site: String::new(),
            description: String::new(),
            device_labels: Default::default(),
        })
    }

    fn put(object: Object, precondition: P) -> StoreCommand {
        StoreCommand::put(object, precondition)
    }

    fn delete(kind: StoreKind, name: &str, precondition: P) -> StoreCommand {
        StoreCommand::Delete { kind, name: name.to_string(), precondition }
    }

    fn revs(mod_revision: u64, create_revision: u64) -> KeyRevisions {
        KeyRevisions { mod_revision, create_revision }
    }

    /// Runs `cmd` against a fixed store and also records which keys were looked up.
    fn run(store: &[(&str, KeyRevisions)], cmd: &StoreCommand, index: u64) -> (Applied, Vec<String>) {
        let store: BTreeMap<String, KeyRevisions> = store.iter().map(|(k, r)| (k.to_string(), *r)).collect();
        let mut looked_up = Vec::new();
        let applied = apply_command::<Infallible>(
            |key| {
                looked_up.push(key.to_string());
                Ok(store.get(key).copied())
            },
            cmd,
            index,
        )
        .unwrap();
        (applied, looked_up)
    }

    fn conflict(kind: StoreKind, name: &str, current_revision: Option<u64>) -> StoreOutcome {
        StoreOutcome::Conflict { kind, name: name.to_string(), current_revision }
    }

    #[test]
    fn put_new_key_stamps_revision_and_create_revision() {
        let (applied, _) = run(&[], &put(site("a"), P::MustNotExist), 7);
        assert_eq!(applied.outcome, StoreOutcome::Applied { revision: 7 });
        let mut want = site("a");
        want.stamp(7, 7);
        assert_eq!(
            applied.writes,
            vec![KeyWrite::Put { key: "site/a".into(), revisions: revs(7, 7), object: Box::new(want) }]
        );
    }

    #[test]
    fn put_existing_key_keeps_create_revision() {
        let (applied, _) = run(&[("site/a", revs(5, 3))], &put(site("a"), P::RevisionIs(5)), 9);
        let KeyWrite::Put { revisions, object, .. } = &applied.writes[0] else { panic!("want a put") };
        assert_eq!(*revisions, revs(9, 3));
        assert_eq!(object.metadata().map(|m| (m.revision, m.create_revision)), Some((9, 3)));
    }

    #[test]
    fn preconditions_against_present_and_absent_keys() {
        let present = [("site/a", revs(5, 3))];
        let cases = [
            (P::None, &present[..], None),
            (P::None, &[][..], None),
            (P::MustNotExist, &[][..], None),
            (P::MustNotExist, &present[..], Some(Some(5))),
            (P::MustExist, &present[..], None),
            (P::MustExist, &[][..], Some(None)),
            (P::RevisionIs(5), &present[..], None),
            (P::RevisionIs(4), &present[..], Some(Some(5))),
            (P::RevisionIs(5), &[][..], Some(None)),
        ];
        for (precondition, store, want_conflict) in cases {
            let (applied, _) = run(store, &put(site("a"), precondition), 9);
            match want_conflict {
                None => {
                    assert_eq!(applied.outcome, StoreOutcome::Applied { revision: 9 }, "{precondition:?}")
                }
                Some(current) => {
                    assert_eq!(applied.outcome, conflict(StoreKind::Site, "a", current), "{precondition:?}");
                    assert!(applied.writes.is_empty());
                }
            }
        }
    }

    #[test]
    fn non_api_kinds_get_revisions_too() {
        let (applied, _) = run(&[("enrolment-token/t1", revs(4, 2))], &put(token("t1"), P::RevisionIs(3)), 9);
        assert_eq!(applied.outcome, conflict(StoreKind::EnrolmentToken, "t1", Some(4)));
        let (applied, _) = run(&[("enrolment-token/t1", revs(4, 2))], &put(token("t1"), P::RevisionIs(4)), 9);
        let KeyWrite::Put { revisions, object, .. } = &applied.writes[0] else { panic!("want a put") };
        assert_eq!((*revisions, object.as_ref()), (revs(9, 2), &token("t1")));
    }

    #[test]
    fn delete_present_and_missing_keys() {
        let (applied, _) = run(&[("site/a", revs(5, 3))], &delete(StoreKind::Site, "a", P::RevisionIs(5)), 9);
        assert_eq!(applied.outcome, StoreOutcome::Applied { revision: 9 });
        assert_eq!(
            applied.writes,
            vec![KeyWrite::Delete { key: "site/a".into(), kind: StoreKind::Site, name: "a".into() }]
        );

        // Deleting a missing key without a precondition is a successful no-op.
        let (applied, _) = run(&[], &delete(StoreKind::Site, "a", P::None), 9);
        assert_eq!((applied.outcome, applied.writes), (StoreOutcome::Applied { revision: 9 }, vec![]));

        let (applied, _) = run(&[], &delete(StoreKind::Site, "a", P::MustExist), 9);
        assert_eq!(applied.outcome, conflict(StoreKind::Site, "a", None));
    }

    #[test]
    fn batch_is_all_or_nothing_and_reports_the_first_conflict() {
        let store = [("site/a", revs(5, 3)), ("site/b", revs(6, 6))];
        let cmd = StoreCommand::Batch(vec![
            put(site("c"), P::MustNotExist),
            delete(StoreKind::Site, "a", P::None),
            put(site("b"), P::RevisionIs(1)),
            put(site("a"), P::MustNotExist),
        ]);
        let (applied, looked_up) = run(&store, &cmd, 9);
        assert_eq!(applied.outcome, conflict(StoreKind::Site, "b", Some(6)));
        assert!(applied.writes.is_empty());
        // Evaluation stopped at the first conflict.
        assert_eq!(looked_up, vec!["site/c", "site/a", "site/b"]);
    }

    #[test]
    fn later_batch_steps_see_earlier_ones() {
        let store = [("site/a", revs(5, 3))];
        let cmd = StoreCommand::Batch(vec![
            delete(StoreKind::Site, "a", P::RevisionIs(5)),
            put(site("a"), P::MustNotExist),
            StoreCommand::Batch(vec![put(site("n"), P::MustNotExist), put(site("n"), P::RevisionIs(9))]),
        ]);
        let (applied, looked_up) = run(&store, &cmd, 9);
        assert_eq!(applied.outcome, StoreOutcome::Applied { revision: 9 });
        // Re-created within the batch: a new incarnation, created at this revision.
        let keys: Vec<_> = applied
            .writes
            .iter()
            .map(|w| match w {
                KeyWrite::Put { key, revisions, .. } => (key.as_str(), Some(*revisions)),
                KeyWrite::Delete { key, .. } => (key.as_str(), None),
            })
            .collect();
        assert_eq!(keys, vec![("site/a", Some(revs(9, 9))), ("site/n", Some(revs(9, 9)))]);
        // Each key is looked up in the store once.
        assert_eq!(looked_up, vec!["site/a", "site/n"]);
    }

    #[test]
    fn conflict_inside_a_batch_reports_the_stored_revision() {
        // The second put conflicts with the first one's effect, but nothing applies, so the
        // revision reported is the store's: the key does not exist.
        let cmd = StoreCommand::Batch(vec![put(site("a"), P::MustNotExist), put(site("a"), P::MustNotExist)]);
        let (applied, _) = run(&[], &cmd, 9);
        assert_eq!(applied.outcome, conflict(StoreKind::Site, "a", None));
    }

    #[test]
    fn put_then_delete_of_a_new_key_writes_nothing() {
        let cmd =
            StoreCommand::Batch(vec![put(site("a"), P::None), delete(StoreKind::Site, "a", P::MustExist)]);
        let (applied, _) = run(&[], &cmd, 9);
        assert_eq!((applied.outcome, applied.writes), (StoreOutcome::Applied { revision: 9 }, vec![]));
    }

    #[test]
    fn empty_batch_applies() {
        let (applied, _) = run(&[], &StoreCommand::Batch(vec![]), 4);
        assert_eq!((applied.outcome, applied.writes), (StoreOutcome::Applied { revision: 4 }, vec![]));
    }

    #[test]
    fn each_skips_only_the_commands_that_conflict() {
        let store = [("site/b", revs(3, 3))];
        let cmd = StoreCommand::Each(vec![
            put(site("a"), P::MustNotExist),
            put(site("b"), P::RevisionIs(2)),
            put(site("c"), P::MustNotExist),
            // Sees the effect of the first command.
            put(site("a"), P::RevisionIs(8)),
            StoreCommand::Batch(vec![put(site("d"), P::None), put(site("b"), P::MustNotExist)]),
        ]);
        let (applied, looked_up) = run(&store, &cmd, 8);
        assert_eq!(
            applied.outcome,
            StoreOutcome::Each(vec![
                StoreOutcome::Applied { revision: 8 },
                conflict(StoreKind::Site, "b", Some(3)),
                StoreOutcome::Applied { revision: 8 },
                StoreOutcome::Applied { revision: 8 },
                conflict(StoreKind::Site, "b", Some(3)),
            ])
        );
        let keys: Vec<&str> = applied
            .writes
            .iter()
            .map(|w| match w {
                KeyWrite::Put { key, .. } | KeyWrite::Delete { key, .. } => key.as_str(),
            })
            .collect();
        assert_eq!(keys, ["site/a", "site/c"], "the failed batch wrote nothing, not even d");
        let mut sorted = looked_up.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), looked_up.len(), "each key looked up once: {looked_up:?}");
    }

    #[test]
    fn lookup_errors_propagate() {
        let res = apply_command(|_| Err("disk on fire"), &put(site("a"), P::None), 1);
        assert_eq!(res.unwrap_err(), "disk on fire");
    }
}
