//! `Config`s and `Secret`s on the device.
//!
//! - In the agent's state database a secret's data is sealed (AES-256-GCM, bound to
//!   the secret's name and digest) with the device key, `<state_dir>/secrets.key`
//!   (0600), kept apart from the database: a copied or backed-up database, or a
//!   support bundle, holds no secret in the clear. Without a TPM the key sits on the
//!   same disk, so this does not stand against root on the device itself; it is what
//!   lets the agent bring the store back after a reboot with the hub unreachable.
//! - What containers see is written, per container, under `<runtime_dir>/private`: a
//!   tmpfs of the agent's own (mounted when the runtime directory is not one already),
//!   which also holds the OCI bundles, as their environment may carry secret values.
//!   Nothing of a secret reaches the device's disk unsealed.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use shared_proto::manifest::DesiredConfig;
use shared_proto::workload::EnvSource;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const KEY_FILE: &str = "secrets.key";
/// Size of the private tmpfs (bundles and config files of every container).
const PRIVATE_TMPFS_BYTES: u64 = 64 << 20;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The device key that seals secrets in the state database.
pub struct DeviceKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl DeviceKey {
    /// Reads `<dir>/secrets.key`, or makes it.
    pub fn load_or_create(dir: &Path) -> io::Result<DeviceKey> {
        let path = dir.join(KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                SystemRandom::new().fill(&mut key).map_err(|_| io::Error::other("no system randomness"))?;
                std::fs::create_dir_all(dir)?;
                let tmp = path.with_extension("tmp");
                {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(&key)?;
                    f.sync_all()?;
                }
                std::fs::rename(&tmp, &path)?;
                key.to_vec()
            }
            Err(e) => return Err(e),
        };
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            io::Error::other(format!("{} must hold 32 bytes, not {}", path.display(), bytes.len()))
        })?;
        Ok(DeviceKey::from_bytes(&key))
    }

    pub fn from_bytes(key: &[u8; 32]) -> DeviceKey {
        DeviceKey {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key")),
            rng: SystemRandom::new(),
        }
    }

    /// Nonce and ciphertext of `c`'s data, bound to its name and digest.
    pub fn seal(&self, c: &DesiredConfig) -> io::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| io::Error::other("no system randomness"))?;
        let mut buf = postcard::to_stdvec(&c.data).map_err(io::Error::other)?;
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(c), &mut buf)
            .map_err(|_| io::Error::other("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// The data sealed for `c` (its name and digest), or `None` when it does not open.
    pub fn open(&self, c: &DesiredConfig, sealed: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = body.to_vec();
        let plain = self.key.open_in_place(nonce, aad(c), &mut buf).ok()?;
        postcard::from_bytes(plain).ok()
    }
}

fn aad(c: &DesiredConfig) -> Aad<Vec<u8>> {
    Aad::from(format!("flotilla/Secret/{}/{}", c.name, c.digest).into_bytes())
}

/// Makes `dir` a private tmpfs unless it is on one already: mode 0701, so that apps'
/// roots in user namespaces pass through to their own Config and Secret files, whose
/// directories are theirs alone (see `crate::dirs`); nothing in it can be listed.
pub fn ensure_private_tmpfs(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o701))?;
    if is_tmpfs(dir) {
        return Ok(());
    }
    let opts = format!("size={PRIVATE_TMPFS_BYTES},mode=0701");
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    )
    .map_err(|e| io::Error::other(format!("mounting a tmpfs on {}: {e}", dir.display())))
}

// The field is a C long: 32 bits on armv7, where the cast is needed.
#[allow(clippy::unnecessary_cast)]
pub fn is_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type().0 as i64 == TMPFS_MAGIC)
}

/// Writes `c`'s keys as files in `dir` (made fresh), readable by the container's user.
pub fn write_files(dir: &Path, c: &DesiredConfig) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (key, value) in &c.data {
        // Keys are validated as file names by the hub; the device checks again.
        if key.is_empty() || key.contains('/') || key == "." || key == ".." {
            return Err(io::Error::other(format!("{key:?} is not a file name")));
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o444)
            .open(dir.join(key))?;
        io::Write::write_all(&mut f, value)?;
    }
    Ok(())
}

/// The value of an environment variable taken from a Config or Secret of `configs`.
pub fn env_value(configs: &[DesiredConfig], from: &EnvSource) -> Result<String, String> {
    let (secret, r) = match (&from.config, &from.secret) {
        (Some(r), _) => (false, r),
        (None, Some(r)) => (true, r),
        (None, None) => return Err("valueFrom names neither a config nor a secret".into()),
    };
    let what = if secret { "Secret" } else { "Config" };
    let c = configs
        .iter()
        .find(|c| c.secret == secret && c.name == r.name)
        .ok_or_else(|| format!("{what} {:?} is not on this device", r.name))?;
    let (_, v) = c
        .data
        .iter()
        .find(|(k, _)| k == &r.key)
        .ok_or_else(|| format!("{what} {:?} has no key {:?}", r.name, r.key))?;
    String::from_utf8(v.clone())
        .map_err(|_| format!("key {:?} of {what} {:?} is not UTF-8 text", r.key, r.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::workload::KeyRef;

    fn secret(digest: &str) -> DesiredConfig {
        DesiredConfig {
            name: "db".into(),
            secret: true,
            digest: digest.into(),
            data: vec![("password".into(), b"hunter2-abc".to_vec())],
        }
    }

    #[test]
    fn sealed_data_opens_only_for_its_name_and_digest() {
        let key = DeviceKey::from_bytes(&[1; 32]);
        let sealed = key.seal(&secret("d1")).unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(key.open(&secret("d1"), &sealed).unwrap(), secret("d1").data);
        assert!(key.open(&secret("d2"), &sealed).is_none());
        assert!(DeviceKey::from_bytes(&[2; 32]).open(&secret("d1"), &sealed).is_none());
        assert!(key.open(&secret("d1"), &sealed[..5]).is_none());
    }

    #[test]
    fn env_values_name_what_is_missing() {
        let configs = vec![secret("d")];
        let from = |name: &str, key: &str| EnvSource {
            secret: Some(KeyRef { name: name.into(), key: key.into() }),
            config: None,
        };
        assert_eq!(env_value(&configs, &from("db", "password")).unwrap(), "hunter2-abc");
        assert!(env_value(&configs, &from("db", "user")).unwrap_err().contains("no key \"user\""));
        assert!(env_value(&configs, &from("x", "password")).unwrap_err().contains("Secret \"x\" is not on"));
    }

    #[test]
    fn files_are_written_per_key() {
        let dir = tempfile::tempdir().unwrap();
        write_files(&dir.path().join("v"), &secret("d")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("v/password")).unwrap(), b"hunter2-abc");
        let mut bad = secret("d");
        bad.data[0].0 = "../x".into();
        assert!(write_files(&dir.path().join("w"), &bad).is_err());
        let key_dir = dir.path().join("state");
        let a = DeviceKey::load_or_create(&key_dir).unwrap();
        let b = DeviceKey::load_or_create(&key_dir).unwrap();
        let sealed = a.seal(&secret("d")).unwrap();
        assert!(b.open(&secret("d"), &sealed).is_some(), "the same key after a restart");
        let mode = std::fs::metadata(key_dir.join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
