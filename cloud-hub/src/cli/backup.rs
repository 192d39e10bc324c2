//! `flotilla backup create FILE` (online, through the API) and `flotilla backup restore
//! FILE --data-dir DIR` (offline, with the hub stopped, as `etcdutl snapshot restore`).
//!
//! A backup holds every object of the store with its revision, the fleet CA with its
//! private key and the API tokens' hashes, and Secrets sealed. It does not hold the hub
//! key that opens them (`secrets.key`, kept apart so that a stolen backup opens no
//! Secret), nor image blobs. Restore takes the key with `--secrets-key`, checks that it
//! is the one the backup's Secrets were sealed with, and refuses to leave them
//! unopenable unless told to.

use super::client::{HubArgs, HubClient};
use anyhow::{Context, bail};
use hub_store::{RestoreTarget, VerifiedBackup};
use shared_proto::store::Object;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Write a consistent, compressed backup of the hub's store to FILE (admin token).
    Create { file: PathBuf },
    /// Create a hub data directory from a backup, with the hub stopped. Start the hub on
    /// it afterwards (`flotilla hub serve --data-dir DIR`).
    Restore {
        file: PathBuf,
        /// A new, empty (or missing) data directory for the restored hub.
        #[arg(long, env = "FLOTILLA_DATA_DIR")]
        data_dir: PathBuf,
        /// A copy of the old hub's `secrets.key`, which opens the backup's Secrets.
        #[arg(long, value_name = "FILE")]
        secrets_key: Option<PathBuf>,
        /// Restore although the backup holds Secrets and no --secrets-key is given: they
        /// will not open, and must be created again. Refused for a backup whose fleet CA
        /// key is sealed (every backup of this version): that needs the key.
        #[arg(long, conflicts_with = "secrets_key")]
        without_secrets_key: bool,
        /// The restored hub's Raft node id (a one-member cluster).
        #[arg(long, default_value_t = 1)]
        node_id: u64,
        /// Restore as the first hub of a cluster: the `host:port` other hubs will reach its
        /// Raft listener at (start it with `hub serve --raft-listen`, then let the others
        /// `hub join`). Needs the hub key, which opens the fleet CA its Raft certificate
        /// comes from.
        #[arg(long, value_name = "HOST:PORT", requires = "secrets_key")]
        raft_advertise: Option<String>,
    },
}

pub async fn run(args: &HubArgs, cmd: &BackupCommand) -> anyhow::Result<()> {
    match cmd {
        BackupCommand::Create { file } => create(args, file).await,
        BackupCommand::Restore {
            file,
            data_dir,
            secrets_key,
            without_secrets_key,
            node_id,
            raft_advertise,
        } => {
            let target =
                RestoreTarget { node_id: *node_id, raft_addr: raft_advertise.clone().unwrap_or_default() };
            let report = restore(file, data_dir, secrets_key.as_deref(), *without_secrets_key, &target)?;
            println!("{report}");
            Ok(())
        }
    }
}

fn describe(backup: &VerifiedBackup) -> String {
    let h = backup.header();
    format!(
        "revision {}, {} objects, taken {} by flotilla {}",
        h.revision,
        h.n_objects,
        h.created_at.to_rfc3339(),
        h.hub_version
    )
}

/// Downloads the backup into a private temporary file beside `file`, checks it whole,
/// then renames it into place: `file` is either the old one or a complete backup.
async fn create(args: &HubArgs, file: &Path) -> anyhow::Result<()> {
    let client = HubClient::connect(args)?;
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Mode 0600: the backup holds the fleet CA's private key.
    let mut tmp = tempfile::Builder::new()
        .prefix(".flotilla-backup-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut response = client.get_stream("/api/v1/backup").await?;
    let max = hub_store::MAX_BACKUP_FILE_BYTES;
    let mut n_bytes = 0u64;
    while let Some(chunk) = response.chunk().await.context("reading the backup from the hub")? {
        n_bytes += chunk.len() as u64;
        if n_bytes > max {
            bail!("the hub sent more than {max} bytes, more than any backup can be");
        }
        tmp.write_all(&chunk).with_context(|| format!("writing {}", tmp.path().display()))?;
    }
    tmp.as_file().sync_all()?;
    let backup = hub_store::read_backup_file(tmp.path())
        .context("the downloaded backup does not check out; nothing was written")?;
    tmp.persist(file).with_context(|| format!("renaming the backup to {}", file.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    println!("wrote {} ({n_bytes} bytes): {}", file.display(), describe(&backup));
    println!(
        "it holds the fleet CA's private key: keep it as safe as the hub itself.\n\
         it does not hold the hub key that opens Secrets ({n} in this backup): keep a copy of the \
         hub's {key} (in its --data-dir) apart from the backup; restore needs it (--secrets-key).\n\
         image blobs are not in it either: import the images again, or copy the old data \
         directory's blobs/ into the restored one.",
        n = n_secrets(&backup),
        key = crate::sealing::KEY_FILE,
    );
    Ok(())
}

fn n_secrets(backup: &VerifiedBackup) -> usize {
    backup.objects().iter().filter(|o| matches!(o, Object::Secret(_))).count()
}

/// Restores `file` into `data_dir`. Everything is checked before anything is written,
/// and a failure part-way removes what this call created.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    secrets_key: Option<&Path>,
    without_secrets_key: bool,
    target: &RestoreTarget,
) -> anyhow::Result<String> {
    let backup = hub_store::read_backup_file(file).with_context(|| format!("{}", file.display()))?;
    let key_bytes = check_secrets_key(&backup, secrets_key, without_secrets_key)?;
    let created_dir = match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: restore into a new, empty data directory (stop the hub, \
                     then move the old directory away or choose another --data-dir)",
                    data_dir.display()
                );
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).with_context(|| format!("reading {}", data_dir.display())),
    };
    let result = write_data_dir(&backup, data_dir, key_bytes.as_deref(), target);
    if let Err(e) = result {
        // Leave the directory as it was found: missing, or empty.
        if created_dir {
            let _ = std::fs::remove_dir_all(data_dir);
        } else if let Ok(entries) = std::fs::read_dir(data_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        return Err(e);
    }
    let mut report =
        format!("restored {} into {}: {}", file.display(), data_dir.display(), describe(&backup));
    let raft = match target.raft_addr.as_str() {
        "" => String::new(),
        addr => format!(" --raft-listen {addr} (node {}; other hubs then `hub join` it)", target.node_id),
    };
    report.push_str(&format!(
        "\nstart the hub with `flotilla hub serve --data-dir {}{raft}`: it is the one member of a new \
         cluster, and new writes get revisions above {}.\nAPI tokens and the fleet CA are \
         restored, so existing CLI contexts and enrolled devices keep working.",
        data_dir.display(),
        backup.header().revision
    ));
    match (key_bytes.is_some(), n_secrets(&backup)) {
        (true, _) => report.push_str(&format!("\ninstalled the hub key as {}", crate::sealing::KEY_FILE)),
        (false, 0) => {}
        (false, n) => report.push_str(&format!(
            "\nwarning: {n} Secret(s) cannot be opened without the old hub's {}: create them again",
            crate::sealing::KEY_FILE
        )),
    }
    report.push_str(
        "\nimage blobs are not in a backup: import the images again, or copy the old data \
         directory's blobs/ here before starting the hub.",
    );
    Ok(report)
}

fn write_data_dir(
    backup: &VerifiedBackup,
    data_dir: &Path,
    key: Option<&[u8]>,
    target: &RestoreTarget,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    if !target.raft_addr.is_empty() {
        let key = key.context("restoring as a cluster's first hub needs --secrets-key")?;
        cluster_identity(backup, data_dir, key, target)?;
    }
    hub_store::restore_store(&data_dir.join("store"), backup, target)?;
    if let Some(key) = key {
        provisioning::files::write_private_file(&data_dir.join(crate::sealing::KEY_FILE), key)?;
    }
    Ok(())
}

/// A restored cluster hub's Raft identity and node record, from the backup's fleet CA
/// (opened with the hub key), so that Raft can start before the store is read.
fn cluster_identity(
    backup: &VerifiedBackup,
    data_dir: &Path,
    key: &[u8],
    target: &RestoreTarget,
) -> anyhow::Result<()> {
    let key: [u8; 32] = key.try_into().context("a hub key holds 32 bytes")?;
    let key = crate::sealing::HubKey::from_bytes(&key);
    let mut fleet = None;
    let mut trusted_extra = Vec::new();
    for o in backup.objects() {
        match o {
            Object::FleetCa(r) => fleet = Some(provisioning::ca::FleetCa::from_record(&key.open_ca(r)?)?),
            Object::CaRotation(r) => {
                trusted_extra.extend(r.next.iter().map(|n| n.cert_der.clone()));
                trusted_extra.extend(r.previous.iter().cloned());
            }
            _ => {}
        }
    }
    let fleet = fleet.context("the backup holds no fleet CA")?;
    let id = target.node_id;
    let (chain, cert_key) =
        crate::cluster::raft_certificate(&fleet, id, crate::cluster::BOOTSTRAP_CERT_LIFETIME)?;
    let mut trusted = vec![fleet.cert_der().clone()];
    trusted.extend(trusted_extra.into_iter().map(rustls_pki_types::CertificateDer::from));
    crate::cluster::save_identity(data_dir, &chain, &cert_key, &trusted)?;
    crate::cluster::write_node_record(
        data_dir,
        &crate::cluster::NodeRecord {
            node_id: id,
            raft_addr: target.raft_addr.clone(),
            joined_via: None,
            join_members: Default::default(),
        },
    )
}

/// Reads the key file and checks it is the key every Secret in the backup was sealed
/// with; without one, refuses a backup holding Secrets unless told to go ahead.
fn check_secrets_key(
    backup: &VerifiedBackup,
    path: Option<&Path>,
    without: bool,
) -> anyhow::Result<Option<Vec<u8>>> {
    let sealed_with: std::collections::BTreeSet<&str> = backup
        .objects()
        .iter()
        .filter_map(|o| match o {
            Object::Secret(s) => Some(s.key_id.as_str()),
            _ => None,
        })
        .collect();
    // The fleet CA's private key (and a staged one's) is sealed with the same key since
    // hubs run as clusters: without the key the restored hub could not sign anything.
    let ca_sealed_with: std::collections::BTreeSet<String> = backup
        .objects()
        .iter()
        .flat_map(|o| match o {
            Object::FleetCa(r) => vec![r],
            Object::CaRotation(r) => r.next.iter().collect(),
            _ => vec![],
        })
        .filter_map(crate::sealing::ca_key_sealed_with)
        .collect();
    let Some(path) = path else {
        if let Some(id) = ca_sealed_with.iter().next() {
            bail!(
                "the backup's fleet CA private key is sealed with hub key {id}: give a copy of the old \
                 hub's {} with --secrets-key FILE (without it the restored hub could neither sign device \
                 certificates nor prove who it is; --without-secrets-key cannot help here)",
                crate::sealing::KEY_FILE
            );
        }
        if !sealed_with.is_empty() && !without {
            bail!(
                "the backup holds {} Secret(s) sealed with hub key {}: give a copy of the old hub's \
                 {} with --secrets-key FILE, or --without-secrets-key to restore without them \
                 opening (they must then be created again)",
                n_secrets(backup),
                sealed_with.into_iter().collect::<Vec<_>>().join(", "),
                crate::sealing::KEY_FILE
            );
        }
        return Ok(None);
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("{} holds {} bytes; a hub key holds 32", path.display(), bytes.len()))?;
    let id = crate::sealing::HubKey::from_bytes(&key).id().to_string();
    if let Some(other) = ca_sealed_with.iter().find(|k| **k != id) {
        bail!(
            "{} is hub key {id}, but the backup's fleet CA key was sealed with hub key {other}: give \
             the secrets.key of the hub the backup was taken from",
            path.display()
        );
    }
    if let Some(other) = sealed_with.iter().find(|k| **k != id) {
        bail!(
            "{} is hub key {id}, but the backup's Secrets were sealed with hub key {other}: give \
             the secrets.key of the hub the backup was taken from",
            path.display()
        );
    }
    Ok(Some(bytes))
}
