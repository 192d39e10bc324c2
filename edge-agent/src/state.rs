//! The agent's state database (redb): its identity, the last desired manifest, the
//! images it unpacked and the containers it created. Every write is one durable
//! transaction, so a crash or power cut at any point leaves either the old or the
//! new record, never half of one.
//!
//! A held manifest's secret data is kept apart, sealed with the device key
//! ([`crate::secrets`]), and written in the same transaction as the manifest.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shared_proto::CodecError;
use shared_proto::agent_state::{
    AgentIdentity, BridgeAddresses, ContainerRecord, HeldDesired, ImageRecord, KnownHubs, SitePeers,
};
use std::path::Path;
use std::sync::Arc;

type Table = TableDefinition<'static, &'static str, &'static [u8]>;

const SINGLETONS: Table = TableDefinition::new("singletons");
const IMAGES: Table = TableDefinition::new("images");
const CONTAINERS: Table = TableDefinition::new("containers");
/// Secret name → sealed data of the held manifest's secrets.
const SECRETS: Table = TableDefinition::new("secrets");

const IDENTITY_KEY: &str = "identity";
const DESIRED_KEY: &str = "desired";
const PEERS_KEY: &str = "site-peers";
const ADDRESSES_KEY: &str = "bridge-addresses";
const HUBS_KEY: &str = "known-hubs";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database: {0}")]
    Db(String),
    #[error("state database record: {0}")]
    Codec(#[from] CodecError),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> Self {
                StateError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[derive(Clone)]
pub struct StateDb {
    db: Arc<Database>,
    key: Arc<crate::secrets::DeviceKey>,
}

impl StateDb {
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        let mut builder = Database::builder();
        builder.set_repair_callback(|_| {});
        let db = builder.create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(SINGLETONS)?;
        tx.open_table(IMAGES)?;
        tx.open_table(CONTAINERS)?;
        tx.open_table(SECRETS)?;
        tx.commit()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let key = crate::secrets::DeviceKey::load_or_create(dir)
            .map_err(|e| StateError::Db(format!("the device key in {}: {e}", dir.display())))?;
        Ok(StateDb { db: Arc::new(db), key: Arc::new(key) })
    }

    fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        tx.open_table(table)?.insert(key, value)?;
        tx.commit()?;
        Ok(())
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    fn remove(&self, table: Table, key: &str) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        tx.open_table(table)?.remove(key)?;
        tx.commit()?;
        Ok(())
    }

    fn all(&self, table: Table) -> Result<Vec<Vec<u8>>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    pub fn identity(&self) -> Result<Option<AgentIdentity>, StateError> {
        self.get(SINGLETONS, IDENTITY_KEY)?.map(|b| AgentIdentity::decode(&b)).transpose().map_err(Into::into)
    }

    pub fn set_identity(&self, id: &AgentIdentity) -> Result<(), StateError> {
        self.put(SINGLETONS, IDENTITY_KEY, &id.encode()?)
    }

    /// The held manifest, its secrets unsealed. A secret that does not open (a lost
    /// device key) is left without data: the containers that use it say so.
    pub fn desired(&self) -> Result<Option<HeldDesired>, StateError> {
        let Some(bytes) = self.get(SINGLETONS, DESIRED_KEY)? else { return Ok(None) };
        let mut held = HeldDesired::decode(&bytes)?;
        for c in held.manifest.configs.iter_mut().filter(|c| c.secret) {
            let sealed = self.get(SECRETS, &c.name)?;
            match sealed.and_then(|s| self.key.open(c, &s)) {
                Some(data) => c.data = data,
                None => tracing::warn!(secret = %c.name, "a held secret does not open with the device key"),
            }
        }
        Ok(Some(held))
    }

    /// Keeps `d`, its secrets' data sealed in their own table, in one transaction.
    pub fn set_desired(&self, d: &HeldDesired) -> Result<(), StateError> {
        let mut stripped = d.clone();
        let mut sealed = Vec::new();
        for c in stripped.manifest.configs.iter_mut().filter(|c| c.secret) {
            sealed.push((c.name.clone(), self.key.seal(c).map_err(|e| StateError::Db(e.to_string()))?));
            c.data = vec![];
        }
        let bytes = stripped.encode()?;
        let tx = self.db.begin_write()?;
        {
            let mut secrets = tx.open_table(SECRETS)?;
            let stale: Vec<String> = secrets
                .iter()?
                .filter_map(|row| row.ok().map(|(k, _)| k.value().to_string()))
                .filter(|k| !sealed.iter().any(|(n, _)| n == k))
                .collect();
            for k in stale {
                secrets.remove(k.as_str())?;
            }
            for (name, s) in &sealed {
                secrets.insert(name.as_str(), s.as_slice())?;
            }
            tx.open_table(SINGLETONS)?.insert(DESIRED_KEY, bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Isolated apps' addresses on the device bridge.
    pub fn bridge_addresses(&self) -> Result<Option<BridgeAddresses>, StateError> {
        self.get(SINGLETONS, ADDRESSES_KEY)?
            .map(|b| BridgeAddresses::decode(&b))
            .transpose()
            .map_err(Into::into)
    }

    pub fn set_bridge_addresses(&self, a: &BridgeAddresses) -> Result<(), StateError> {
        self.put(SINGLETONS, ADDRESSES_KEY, &a.encode()?)
    }

    /// The site peers the hub last named.
    pub fn site_peers(&self) -> Result<Option<SitePeers>, StateError> {
        self.get(SINGLETONS, PEERS_KEY)?.map(|b| SitePeers::decode(&b)).transpose().map_err(Into::into)
    }

    pub fn set_site_peers(&self, p: &SitePeers) -> Result<(), StateError> {
        self.put(SINGLETONS, PEERS_KEY, &p.encode()?)
    }

    /// The cluster's hubs the hub last named.
    pub fn known_hubs(&self) -> Result<Option<KnownHubs>, StateError> {
        self.get(SINGLETONS, HUBS_KEY)?.map(|b| KnownHubs::decode(&b)).transpose().map_err(Into::into)
    }

    pub fn set_known_hubs(&self, h: &KnownHubs) -> Result<(), StateError> {
        self.put(SINGLETONS, HUBS_KEY, &h.encode()?)
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StateError> {
        self.all(IMAGES)?.iter().map(|b| ImageRecord::decode(b).map_err(Into::into)).collect()
    }

    pub fn put_image(&self, r: &ImageRecord) -> Result<(), StateError> {
        self.put(IMAGES, &r.manifest_digest, &r.encode()?)
    }

    pub fn remove_image(&self, digest: &str) -> Result<(), StateError> {
        self.remove(IMAGES, digest)
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StateError> {
        self.all(CONTAINERS)?.iter().map(|b| ContainerRecord::decode(b).map_err(Into::into)).collect()
    }

    pub fn put_container(&self, r: &ContainerRecord) -> Result<(), StateError> {
        self.put(CONTAINERS, &r.id, &r.encode()?)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), StateError> {
        self.remove(CONTAINERS, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::Timestamp;
    use shared_proto::manifest::DesiredManifest;

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let db = StateDb::open(&path).unwrap();
            assert_eq!(db.desired().unwrap(), None);
            db.set_desired(&HeldDesired {
                manifest: DesiredManifest {
                    device: "pi".into(),
                    revision: 7,
                    apps: vec![],
                    ..Default::default()
                },
                received_at: Timestamp(1),
            })
            .unwrap();
            db.set_identity(&AgentIdentity {
                device: "pi".into(),
                hub: "h:1".into(),
                enrolled_at: Timestamp(2),
            })
            .unwrap();
            db.put_container(&ContainerRecord {
                id: "web_a_1".into(),
                app: "web".into(),
                name: "a".into(),
                generation: 1,
                spec_hash: "1".into(),
                image_digest: "sha256:x".into(),
                created_at: Timestamp(3),
                restarts: 0,
                init: false,
                grace_period_seconds: 10,
                pre_stop: None,
            })
            .unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.desired().unwrap().unwrap().manifest.revision, 7);
        assert_eq!(db.identity().unwrap().unwrap().device, "pi");
        assert_eq!(db.containers().unwrap().len(), 1);
        assert_eq!(db.bridge_addresses().unwrap(), None);
        let book =
            BridgeAddresses { subnet: "10.88.0.0/16".into(), apps: vec![("web".into(), [10, 88, 0, 2])] };
        db.set_bridge_addresses(&book).unwrap();
        drop(db);
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.bridge_addresses().unwrap(), Some(book));
        db.remove_container("web_a_1").unwrap();
        assert!(db.containers().unwrap().is_empty());
    }

    #[test]
    fn secrets_are_sealed_apart_and_come_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let secret = shared_proto::manifest::DesiredConfig {
            name: "db".into(),
            secret: true,
            digest: "hmac-sha256:1".into(),
            data: vec![("password".into(), b"correct-horse-battery".to_vec())],
        };
        let config = shared_proto::manifest::DesiredConfig {
            name: "conf".into(),
            secret: false,
            digest: "sha256:2".into(),
            data: vec![("a".into(), b"b".to_vec())],
        };
        let held = HeldDesired {
            manifest: DesiredManifest {
                device: "pi".into(),
                revision: 3,
                apps: vec![],
                configs: vec![config.clone(), secret.clone()],
            },
            received_at: Timestamp(1),
        };
        {
            let db = StateDb::open(&path).unwrap();
            db.set_desired(&held).unwrap();
            assert_eq!(db.desired().unwrap().unwrap(), held);
        }
        let file = std::fs::read(&path).unwrap();
        assert!(!file.windows(13).any(|w| w == b"correct-horse"), "no secret in the database file");
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.desired().unwrap().unwrap(), held, "unsealed after a restart");
        // A manifest without it drops the sealed copy too.
        let mut next = held.clone();
        next.manifest.configs = vec![config];
        db.set_desired(&next).unwrap();
        assert!(db.get(SECRETS, "db").unwrap().is_none());
    }
}
