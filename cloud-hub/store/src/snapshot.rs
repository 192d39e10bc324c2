//! The snapshot blob: every object of the state machine at one applied log id, written from a
//! single redb read transaction while writes go on, and read back when a follower installs it.
//!
//! Layout (postcard, not self-describing, so the version comes first):
//! `varint(SNAPSHOT_FORMAT_VERSION)`, `varint(n_records)`, then `n_records` times the tuple
//! `(key: str, mod_revision: u64, create_revision: u64, object: bytes)` in key order, where
//! `object` is `Object::encode()`. The snapshot's openraft meta (last log id, membership) travels
//! beside the blob, never inside it.

use crate::apply::KeyRevisions;
use crate::db::DbError;
use redb::ReadableTable;
use shared_proto::CodecError;
use shared_proto::store::Object;

pub(crate) const SNAPSHOT_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("snapshot record {idx} is stored under {key:?} but holds {actual:?}")]
    WrongKey { idx: u64, key: String, actual: String },
    #[error("snapshot record {idx} ({key:?}) is out of key order")]
    OutOfOrder { idx: u64, key: String },
}

/// One object of a decoded snapshot.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotRecord {
    pub key: String,
    pub revisions: KeyRevisions,
    pub bytes: Vec<u8>,
    pub object: Object,
}

/// Writes every object of `objects` (one read transaction's view) into a snapshot blob.
pub(crate) fn write_snapshot<T>(objects: &T) -> Result<Vec<u8>, DbError>
where
    T: ReadableTable<&'static str, (u64, u64, &'static [u8])>,
{
    let what = "snapshot";
    let encode_err = |source| DbError::Snapshot(SnapshotError::Codec(CodecError::Encode { what, source }));
    let n_records = objects.len()?;
    let mut out = postcard::to_stdvec(&SNAPSHOT_FORMAT_VERSION).map_err(encode_err)?;
    out = postcard::to_extend(&n_records, out).map_err(encode_err)?;
    for item in objects.iter()? {
        let (key, value) = item?;
        let (mod_revision, create_revision, bytes) = value.value();
        out = postcard::to_extend(&(key.value(), mod_revision, create_revision, bytes), out)
            .map_err(encode_err)?;
    }
    Ok(out)
}

/// Decodes and checks a whole snapshot blob: every object must decode and sit under its own key,
/// keys strictly increasing. A blob that fails here is refused before it reaches the state
/// machine.
pub(crate) fn read_snapshot(blob: &[u8]) -> Result<Vec<SnapshotRecord>, SnapshotError> {
    let what = "snapshot";
    let malformed = |source| CodecError::Malformed { what, source };
    let (version, rest) = shared_proto::codec::peek_version(blob, what)?;
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(
            CodecError::UnsupportedVersion { found: version, supported: SNAPSHOT_FORMAT_VERSION }.into()
        );
    }
    let (n_records, mut rest) = postcard::take_from_bytes::<u64>(rest).map_err(malformed)?;
    // The count comes from the peer: never let it size an allocation beyond what the blob holds.
    let mut records =
        Vec::with_capacity(usize::try_from(n_records).unwrap_or(usize::MAX).min(rest.len() / 4));
    for idx in 0..n_records {
        let ((key, mod_revision, create_revision, bytes), tail) =
            postcard::take_from_bytes::<(&str, u64, u64, &[u8])>(rest).map_err(malformed)?;
        rest = tail;
        let object = Object::decode(bytes)?;
        if object.key() != key {
            return Err(SnapshotError::WrongKey { idx, key: key.to_string(), actual: object.key() });
        }
        if records.last().is_some_and(|prev: &SnapshotRecord| prev.key.as_str() >= key) {
            return Err(SnapshotError::OutOfOrder { idx, key: key.to_string() });
        }
        records.push(SnapshotRecord {
            key: key.to_string(),
            revisions: KeyRevisions { mod_revision, create_revision },
            bytes: bytes.to_vec(),
            object,
        });
    }
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes { what, extra: rest.len() }.into());
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{OBJECTS, begin_read, begin_write, open_database};
    use shared_proto::store::FleetCaRecord;

    fn ca() -> Object {
        Object::FleetCa(FleetCaRecord {
            cert_der: vec![0xc0],
            key_pkcs8_der: vec![0x6b],
            created_at: shared_proto::Timestamp(1),
        })
    }

    /// Pins the blob layout: version, record count, then (key, mod, create, object bytes).
    #[test]
    fn golden_bytes_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_database(&dir.path().join("store.redb")).unwrap();
        let object_bytes = ca().encode().unwrap();
        let txn = begin_write(&db).unwrap();
        txn.open_table(OBJECTS).unwrap().insert("fleet-ca/fleet", (300, 2, object_bytes.as_slice())).unwrap();
        txn.commit().unwrap();

        let txn = begin_read(&db).unwrap();
        let blob = write_snapshot(&txn.open_table(OBJECTS).unwrap()).unwrap();
        let mut want = vec![0x01, 0x01, 0x0e];
        want.extend_from_slice(b"fleet-ca/fleet");
        want.extend_from_slice(&[0xac, 0x02, 0x02, object_bytes.len() as u8]);
        want.extend_from_slice(&object_bytes);
        assert_eq!(blob, want);

        let records = read_snapshot(&blob).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].key, "fleet-ca/fleet");
        assert_eq!(records[0].revisions, KeyRevisions { mod_revision: 300, create_revision: 2 });
        assert_eq!(records[0].object, ca());
    }

    #[test]
    fn inconsistent_blobs_are_refused() {
        let record = |key: &str| {
            let bytes = ca().encode().unwrap();
            postcard::to_stdvec(&(key, 1u64, 1u64, bytes.as_slice())).unwrap()
        };
        let blob = |n: u64, records: &[Vec<u8>], trailing: &[u8]| {
            let mut out = postcard::to_stdvec(&SNAPSHOT_FORMAT_VERSION).unwrap();
            out.extend(postcard::to_stdvec(&n).unwrap());
            records.iter().for_each(|r| out.extend(r));
            out.extend_from_slice(trailing);
            out
        };
        let good = record("fleet-ca/fleet");
        assert!(read_snapshot(&blob(1, std::slice::from_ref(&good), &[])).is_ok());
        assert!(matches!(
            read_snapshot(&blob(1, &[record("site/x")], &[])),
            Err(SnapshotError::WrongKey { .. })
        ));
        assert!(matches!(
            read_snapshot(&blob(2, &[good.clone(), good.clone()], &[])),
            Err(SnapshotError::OutOfOrder { idx: 1, .. })
        ));
        assert!(
            read_snapshot(&blob(2, std::slice::from_ref(&good), &[])).is_err(),
            "fewer records than announced"
        );
        assert!(read_snapshot(&blob(u64::MAX, &[], &[])).is_err(), "a huge count is not an allocation");
        assert!(matches!(
            read_snapshot(&blob(1, std::slice::from_ref(&good), &[0])),
            Err(SnapshotError::Codec(CodecError::TrailingBytes { extra: 1, .. }))
        ));
        let mut newer = blob(0, &[], &[]);
        newer[0] = 2;
        assert!(matches!(
            read_snapshot(&newer),
            Err(SnapshotError::Codec(CodecError::UnsupportedVersion { found: 2, supported: 1 }))
        ));
    }
}
