//! The hub key, which seals `Secret`s before they are written: the Raft log, the store
//! file, snapshots and backups only ever hold ciphertext. The key is 32 random bytes in
//! `<data_dir>/secrets.key` (mode 0600), made on first start; every hub of a cluster
//! needs the same file. Two keys are derived from it (HMAC-SHA256 as the KDF), one for
//! AES-256-GCM and one for the digest that tells whether a secret changed, so the
//! digest reveals nothing the ciphertext does not.
//!
//! The seal is bound to the secret's name (the additional data), so a sealed value
//! copied under another name does not open.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use shared_proto::store::SealedSecret;
use std::path::Path;

pub const KEY_FILE: &str = "secrets.key";
const KEY_LEN: usize = 32;
/// Largest sealed blob opened (the data limit plus encoding and the tag).
const MAX_SEALED: usize = shared_proto::validate::MAX_CONFIG_BYTES + 64 * 1024;

pub struct HubKey {
    seal: LessSafeKey,
    digest: hmac::Key,
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
            id: hex::encode(&id.as_ref()[..4]),
            rng: SystemRandom::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
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
