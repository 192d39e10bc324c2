//! The hub key, which seals `Secret`s before they are written: the Raft log, the store
//! file, snapshots and backups only ever hold ciphertext. The key is 32 random bytes in
//! `<data_dir>/secrets.key` (mode 0600), made on first start; every hub of a cluster
//! needs the same file. Two keys are derived from it (HMAC-SHA256 as the KDF), one for
//! AES-256-GCM and one for the digest that tells whether a secret changed, so the
//! digest reveals nothing the ciphertext does not.
//!
//! The seal is bound to the secret's name (the additional data), so a sealed value
//! copied under another name does not open.
//!
//! The same key seals the fleet CA's private key in its store record (and the staged
//! CA's, during a rotation), so Raft traffic, snapshots and backups never carry it in
//! clear: the key is the cluster's one secret, which `flotilla hub join` hands to a new
//! hub over mutual TLS. The sealed key is bound to the CA certificate's fingerprint. A
//! record written by an older hub holds the PKCS#8 key in clear (it starts with a DER
//! SEQUENCE, 0x30, which the sealed form never does); the leader seals it at start.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use shared_proto::store::{FleetCaRecord, SealedSecret};
use std::path::Path;

pub const KEY_FILE: &str = "secrets.key";
const KEY_LEN: usize = 32;
/// Largest sealed blob opened (the data limit plus encoding and the tag).
const MAX_SEALED: usize = shared_proto::validate::MAX_CONFIG_BYTES + 64 * 1024;

pub struct HubKey {
    seal: LessSafeKey,
    digest: hmac::Key,
    /// Signs hub join tokens (`cluster.rs`).
    join: hmac::Key,
    id: String,
    rng: SystemRandom,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "secret {name:?} was sealed with hub key {sealed_with}, but this hub has key {ours}: give every hub the same {KEY_FILE}"
    )]
    WrongKey { name: String, sealed_with: String, ours: String },
    #[error("secret {0:?} does not open with the hub key: the store record is damaged")]
    Damaged(String),
    #[error("{0}")]
    Io(String),
}

impl HubKey {
    /// Reads the key in `data_dir`, or makes one when there is none.
    pub fn load_or_create(data_dir: &Path) -> Result<HubKey, SealError> {
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                    SealError::Io(format!(
                        "{} must hold {KEY_LEN} bytes, not {}",
                        path.display(),
                        bytes.len()
                    ))
                })?;
                Ok(HubKey::from_bytes(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| SealError::Io("no system randomness".into()))?;
                provisioning::files::write_private_file(&path, &key)
                    .map_err(|e| SealError::Io(format!("writing {}: {e}", path.display())))?;
                Ok(HubKey::from_bytes(&key))
            }
            Err(e) => Err(SealError::Io(format!("reading {}: {e}", path.display()))),
        }
    }

    pub fn from_bytes(key: &[u8; KEY_LEN]) -> HubKey {
        let master = hmac::Key::new(hmac::HMAC_SHA256, key);
        let derive = |label: &[u8]| hmac::sign(&master, label);
        let seal = derive(b"flotilla secret seal v1");
        let digest = derive(b"flotilla secret digest v1");
        let id = derive(b"flotilla key id v1");
        HubKey {
            seal: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, seal.as_ref()).expect("32-byte key")),
            digest: hmac::Key::new(hmac::HMAC_SHA256, digest.as_ref()),
            join: hmac::Key::new(hmac::HMAC_SHA256, derive(b"flotilla hub join token v1").as_ref()),
            id: hex::encode(&id.as_ref()[..4]),
            rng: SystemRandom::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// HMAC-SHA256 of `message` with the join-token key.
    pub fn join_mac(&self, message: &[u8]) -> Vec<u8> {
        hmac::sign(&self.join, message).as_ref().to_vec()
    }

    /// Whether `mac` is the join-token HMAC of `message` (in constant time).
    pub fn verify_join_mac(&self, message: &[u8], mac: &[u8]) -> bool {
        hmac::verify(&self.join, message, mac).is_ok()
    }

    /// `hmac-sha256:…` of the entries (sorted by key).
    pub fn digest(&self, entries: &[(String, Vec<u8>)]) -> String {
        let mut ctx = hmac::Context::with_key(&self.digest);
        for (k, v) in entries {
            ctx.update(&(k.len() as u64).to_le_bytes());
            ctx.update(k.as_bytes());
            ctx.update(&(v.len() as u64).to_le_bytes());
            ctx.update(v);
        }
        format!("hmac-sha256:{}", hex::encode(ctx.sign().as_ref()))
    }

    /// Seals `entries` for the secret `metadata.name`.
    pub fn seal(
        &self,
        metadata: shared_proto::ObjectMeta,
        entries: &[(String, Vec<u8>)],
    ) -> Result<SealedSecret, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Io("no system randomness".into()))?;
        let mut buf = postcard::to_stdvec(entries).map_err(|e| SealError::Io(e.to_string()))?;
        self.seal
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(&metadata.name), &mut buf)
            .map_err(|_| SealError::Io("sealing failed".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buf);
        Ok(SealedSecret {
            keys: entries.iter().map(|(k, _)| k.clone()).collect(),
            digest: self.digest(entries),
            key_id: self.id.clone(),
            sealed,
            metadata,
        })
    }

    pub fn unseal(&self, s: &SealedSecret) -> Result<Vec<(String, Vec<u8>)>, SealError> {
        let name = &s.metadata.name;
        if s.key_id != self.id {
            return Err(SealError::WrongKey {
                name: name.clone(),
                sealed_with: s.key_id.clone(),
                ours: self.id.clone(),
            });
        }
        if s.sealed.len() < NONCE_LEN || s.sealed.len() > MAX_SEALED {
            return Err(SealError::Damaged(name.clone()));
        }
        let (nonce, body) = s.sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Damaged(name.clone()))?;
        let mut buf = body.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, aad(name), &mut buf)
            .map_err(|_| SealError::Damaged(name.clone()))?;
        postcard::from_bytes(plain).map_err(|_| SealError::Damaged(name.clone()))
    }
}

/// Marks a sealed CA key: `SEALED_CA_MAGIC | key id (8 hex digits) | nonce | ciphertext+tag`.
const SEALED_CA_MAGIC: &[u8; 8] = b"FLSEALv1";
/// Largest sealed CA key opened (a PKCS#8 EC key is under 200 bytes).
const MAX_SEALED_CA: usize = 16 * 1024;

/// Whether the record's private key is sealed (rather than in clear, from an older hub).
pub fn ca_key_is_sealed(record: &FleetCaRecord) -> bool {
    record.key_pkcs8_der.starts_with(SEALED_CA_MAGIC)
}

/// The id of the hub key that sealed the record's private key, if it is sealed.
pub fn ca_key_sealed_with(record: &FleetCaRecord) -> Option<String> {
    let rest = record.key_pkcs8_der.strip_prefix(SEALED_CA_MAGIC)?;
    rest.get(..8).map(|id| String::from_utf8_lossy(id).into_owned())
}

fn ca_aad(record: &FleetCaRecord) -> Aad<Vec<u8>> {
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, &record.cert_der);
    let mut aad = b"flotilla/FleetCa/".to_vec();
    aad.extend_from_slice(fingerprint.as_ref());
    Aad::from(aad)
}

impl HubKey {
    /// The record with its private key sealed (a sealed record is returned as it is).
    pub fn seal_ca(&self, mut record: FleetCaRecord) -> Result<FleetCaRecord, SealError> {
        if ca_key_is_sealed(&record) {
            return Ok(record);
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Io("no system randomness".into()))?;
        let mut buf = std::mem::take(&mut record.key_pkcs8_der);
        self.seal
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), ca_aad(&record), &mut buf)
            .map_err(|_| SealError::Io("sealing failed".into()))?;
        let mut sealed = SEALED_CA_MAGIC.to_vec();
        sealed.extend_from_slice(self.id.as_bytes());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&buf);
        record.key_pkcs8_der = sealed;
        Ok(record)
    }

    /// The record with its private key in clear, for [`provisioning::ca::FleetCa::from_record`]
    /// (a record from an older hub is returned as it is).
    pub fn open_ca(&self, record: &FleetCaRecord) -> Result<FleetCaRecord, SealError> {
        let Some(rest) = record.key_pkcs8_der.strip_prefix(SEALED_CA_MAGIC) else {
            return Ok(record.clone());
        };
        let what = "the fleet CA's private key";
        if rest.len() < 8 + NONCE_LEN || rest.len() > MAX_SEALED_CA {
            return Err(SealError::Damaged(what.into()));
        }
        let (id, rest) = rest.split_at(8);
        let id = String::from_utf8_lossy(id).into_owned();
        if id != self.id {
            return Err(SealError::WrongKey { name: what.into(), sealed_with: id, ours: self.id.clone() });
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Damaged(what.into()))?;
        let mut buf = body.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, ca_aad(record), &mut buf)
            .map_err(|_| SealError::Damaged(what.into()))?;
        Ok(FleetCaRecord { key_pkcs8_der: plain.to_vec(), ..record.clone() })
    }
}

fn aad(name: &str) -> Aad<Vec<u8>> {
    Aad::from(format!("flotilla/Secret/{name}").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::ObjectMeta;

    fn entries() -> Vec<(String, Vec<u8>)> {
        vec![("password".into(), b"hunter2-very-secret".to_vec()), ("user".into(), b"pos".to_vec())]
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_name() {
        let key = HubKey::from_bytes(&[7; 32]);
        let s = key.seal(ObjectMeta::named("db"), &entries()).unwrap();
        assert_eq!(s.keys, vec!["password".to_string(), "user".to_string()]);
        let bytes = postcard::to_stdvec(&s).unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"hunter"), "no plaintext in the record");
        assert_eq!(key.unseal(&s).unwrap(), entries());
        // Same data, same digest; fresh nonce, different ciphertext.
        let again = key.seal(ObjectMeta::named("db"), &entries()).unwrap();
        assert_eq!(again.digest, s.digest);
        assert_ne!(again.sealed, s.sealed);
        // Another name, a flipped bit, another key: refused.
        let mut renamed = s.clone();
        renamed.metadata.name = "other".into();
        assert!(matches!(key.unseal(&renamed), Err(SealError::Damaged(_))));
        let mut flipped = s.clone();
        *flipped.sealed.last_mut().unwrap() ^= 1;
        assert!(matches!(key.unseal(&flipped), Err(SealError::Damaged(_))));
        let other = HubKey::from_bytes(&[8; 32]);
        assert!(matches!(other.unseal(&s), Err(SealError::WrongKey { .. })));
        assert_ne!(other.digest(&entries()), s.digest, "the digest is keyed");
    }

    #[test]
    fn the_fleet_ca_key_is_sealed_to_its_certificate() {
        let ca = provisioning::ca::FleetCa::generate("test").unwrap();
        let plain = ca.to_record(shared_proto::Timestamp(1));
        let key = HubKey::from_bytes(&[7; 32]);
        let sealed = key.seal_ca(plain.clone()).unwrap();
        assert!(ca_key_is_sealed(&sealed) && !ca_key_is_sealed(&plain));
        assert_eq!(ca_key_sealed_with(&sealed).as_deref(), Some(key.id()));
        assert!(!sealed.key_pkcs8_der.windows(16).any(|w| plain.key_pkcs8_der.windows(16).any(|p| p == w)));
        assert_eq!(key.open_ca(&sealed).unwrap(), plain);
        assert_eq!(key.seal_ca(sealed.clone()).unwrap(), sealed, "sealing twice changes nothing");
        assert_eq!(key.open_ca(&plain).unwrap(), plain, "a record from an older hub opens as it is");
        let other = HubKey::from_bytes(&[8; 32]);
        assert!(matches!(other.open_ca(&sealed), Err(SealError::WrongKey { .. })));
        // Bound to the certificate: the key does not open under another CA's certificate.
        let mut moved = sealed.clone();
        moved.cert_der = provisioning::ca::FleetCa::generate("other")
            .unwrap()
            .to_record(shared_proto::Timestamp(1))
            .cert_der;
        assert!(matches!(key.open_ca(&moved), Err(SealError::Damaged(_))));
        let mut cut = sealed.clone();
        cut.key_pkcs8_der.truncate(20);
        assert!(matches!(key.open_ca(&cut), Err(SealError::Damaged(_))));
    }

    #[test]
    fn the_key_file_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = HubKey::load_or_create(dir.path()).unwrap();
        let b = HubKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.id(), b.id());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(HubKey::load_or_create(dir.path()).is_err());
    }
}
