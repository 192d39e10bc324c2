//! Unpacks image layers into a root filesystem. This runs as root on devices against
//! untrusted tars, so it never lets a path leave the root:
//!
//! - entry and hard-link paths are refused if absolute or holding `..`;
//! - every parent directory is opened component by component with `O_NOFOLLOW`
//!   relative to its own parent's descriptor, so a symlink (planted by this layer or an
//!   earlier one) is never followed: an entry whose path goes through one is refused;
//! - the final component is always created fresh (`O_EXCL`, `mkdirat`, `symlinkat`…)
//!   after removing what was there, so nothing is ever written through an existing link;
//! - symlinks are created exactly as the layer says, since they are only resolved later
//!   inside the container's own root.
//!
//! Layers apply in order with OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`), into a temp
//! directory next to the target that is renamed into place only once everything is
//! unpacked, verified and synced.

use crate::blobstore::{BlobError, BlobStore};
use crate::decompress::decompress;
use crate::digest::{Digest, DigestError, VerifyingReader};
use crate::oci::{Descriptor, MediaKind};
use crate::path;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: entry {path:?}: {reason}")]
    Entry { layer: Digest, path: String, reason: String },
    #[error("layer {layer}: {source}; the layer is corrupt or not a tar archive")]
    Read {
        layer: Digest,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: {source}; pull the image again")]
    Verify {
        layer: Digest,
        #[source]
        source: DigestError,
    },
    #[error("layer {layer}: media type {media_type:?} is not a layer format that can be unpacked")]
    UnsupportedMediaType { layer: Digest, media_type: String },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("the unpacked image would be larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error(
        "not enough free disk: {needed} more bytes would leave less than the {reserve} bytes kept free ({free} free)"
    )]
    DiskFull { needed: u64, free: u64, reserve: u64 },
    #[error("the image has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("{0} already exists; remove it first")]
    Exists(PathBuf),
    #[error("{path}: {reason}")]
    Target { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = UnpackError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Bound on the bytes of regular files written, against decompression bombs.
    pub max_unpacked_size: u64,
    pub max_entries: u64,
    /// Apply the layers' owners (needs root); otherwise everything belongs to the caller.
    pub same_owner: bool,
    /// Free space left on the target's filesystem, checked before the first layer
    /// (against the layers' compressed size) and before every file: the device's
    /// store, logs and database must not run out of disk because of an image.
    pub reserve_free: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            max_unpacked_size: 32 << 30,
            max_entries: 2_000_000,
            same_owner: rustix::process::geteuid().is_root(),
            reserve_free: 256 << 20,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Bytes of the unpacked tree: regular files (hard links counted once) and symlinks.
    pub size: u64,
    pub n_entries: u64,
    /// What was skipped (device nodes without the privilege, xattrs, owners).
    pub warnings: Vec<String>,
}

const MAX_WARNINGS: usize = 50;

/// Unpacks `layers` (bottom first) from `store` into the new directory `target`,
/// verifying each layer's digest as it streams. `target` must not exist yet. Unpacks
/// into the same parent directory are serialised by a lock on that directory.
pub fn unpack_layers(
    store: &BlobStore,
    layers: &[Descriptor],
    target: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport> {
    let (parent, name) = split_target(target)?;
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let _lock = lock_dir(parent)?;
    if fs::symlink_metadata(target).is_ok() {
        return Err(UnpackError::Exists(target.to_path_buf()));
    }
    let temp = parent.join(format!(".{name}.partial"));
    if fs::symlink_metadata(&temp).is_ok() {
        // Left by a crash: we hold the lock, so nobody is writing it.
        fs::remove_dir_all(&temp).map_err(io_err(&temp))?;
    }
    fs::create_dir(&temp).map_err(io_err(&temp))?;
    let result = unpack_into(store, layers, &temp, opts);
    match result {
        Ok(report) => {
            fs::rename(&temp, target).map_err(io_err(target))?;
            File::open(parent).and_then(|d| d.sync_all()).map_err(io_err(parent))?;
            Ok(report)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&temp);
            Err(e)
        }
    }
}

fn split_target(target: &Path) -> Result<(&Path, String)> {
    let bad = |reason: &str| UnpackError::Target { path: target.to_path_buf(), reason: reason.into() };
    let name = target.file_name().ok_or_else(|| bad("needs a final path component"))?;
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok((parent, name.to_string_lossy().into_owned()))
}

fn lock_dir(dir: &Path) -> Result<File> {
    let f = File::open(dir).map_err(io_err(dir))?;
    f.lock().map_err(io_err(dir))?;
    Ok(f)
}

fn unpack_into(
    store: &BlobStore,
    layers: &[Descriptor],
    dir: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport> {
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(dir)(e.into()))?;
    rustix::fs::fchmod(&root, Mode::from_raw_mode(0o755)).map_err(|e| io_err(dir)(e.into()))?;
    // At least the compressed layers will land on the disk.
    let compressed = layers.iter().map(|l| l.size).fold(0u64, u64::saturating_add);
    check_free(&root, compressed, opts.reserve_free).map_err(|e| match e {
        Fail::DiskFull { needed, free } => UnpackError::DiskFull { needed, free, reserve: opts.reserve_free },
        Fail::Io(e) => io_err(dir)(e),
        _ => io_err(dir)(io::Error::other("checking free disk")),
    })?;
    let mut state = Unpacker {
        root,
        opts,
        report: UnpackReport::default(),
        budget: opts.max_unpacked_size,
        n_warnings_dropped: 0,
    };
    for layer in layers {
        state.apply_layer(store, layer)?;
    }
    if state.n_warnings_dropped > 0 {
        state.report.warnings.push(format!("… and {} more warnings", state.n_warnings_dropped));
    }
    state.report.size = tree_size(dir).map_err(io_err(dir))?;
    // Power cuts are routine on devices: the rename below must not publish a tree whose
    // file contents are still in the page cache.
    rustix::fs::syncfs(&state.root).map_err(|e| io_err(dir)(e.into()))?;
    Ok(state.report)
}

/// Whether `needed` more bytes leave at least `reserve` free on `fd`'s filesystem.
fn check_free(fd: &OwnedFd, needed: u64, reserve: u64) -> std::result::Result<(), Fail> {
    let st = rustix::fs::fstatvfs(fd).map_err(|e| Fail::Io(e.into()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < needed.saturating_add(reserve) {
        return Err(Fail::DiskFull { needed, free });
    }
    Ok(())
}

struct Unpacker<'a> {
    root: OwnedFd,
    opts: &'a UnpackOptions,
    report: UnpackReport,
    budget: u64,
    n_warnings_dropped: usize,
}

/// What one entry asks for, taken from its header and PAX records.
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Why an entry failed, before the layer and path are attached.
enum Fail {
    Refused(String),
    Io(io::Error),
    TooLarge,
    DiskFull { needed: u64, free: u64 },
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Self {
        Fail::Io(e.into())
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

fn refused(reason: impl Into<String>) -> Fail {
    Fail::Refused(reason.into())
}

type FResult<T> = std::result::Result<T, Fail>;

/// Paths are keyed by their cleaned components joined with `/`.
fn key_of(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

fn show(parts: &[&[u8]]) -> String {
    String::from_utf8_lossy(&key_of(parts)).into_owned()
}

/// Bookkeeping for one layer.
#[derive(Default)]
struct LayerState {
    /// Paths this layer created or passed through: whiteouts only remove what lower
    /// layers made.
    present: HashSet<Vec<u8>>,
    /// Directory mtimes are set once the layer is done, since creating entries inside a
    /// directory changes its mtime.
    dir_mtimes: HashMap<Vec<u8>, Timespec>,
}

impl Unpacker<'_> {
    fn warn(&mut self, message: String) {
        if self.report.warnings.len() < MAX_WARNINGS {
            self.report.warnings.push(message);
        } else {
            self.n_warnings_dropped += 1;
        }
    }

    fn apply_layer(&mut self, store: &BlobStore, desc: &Descriptor) -> Result<()> {
        let layer = desc.digest;
        let MediaKind::Layer(compression) = desc.kind() else {
            return Err(UnpackError::UnsupportedMediaType { layer, media_type: desc.media_type.clone() });
        };
        let file = store.open_blob(&layer)?;
        let mut verifying =
            VerifyingReader::new(io::BufReader::with_capacity(256 * 1024, file), layer, desc.size);
        let mut layer_state = LayerState::default();
        let applied = (|| {
            let guarded = crate::tarcap::ExtensionCap::new(
                decompress(&mut verifying, compression),
                crate::tarcap::DEFAULT_EXTENSION_CAP,
            );
            let mut archive = tar::Archive::new(guarded);
            self.apply_entries(&mut archive, layer, &mut layer_state)?;
            // Read to the end so a gzip trailer or checksum error is not missed.
            io::copy(&mut archive.into_inner(), &mut io::sink())
                .map_err(|source| UnpackError::Read { layer, source })?;
            Ok(())
        })();
        // A layer that does not match its digest is reported as such, even when the
        // damage also broke the tar or the compression.
        let verified = verifying.finish().map_err(|source| UnpackError::Verify { layer, source });
        match (applied, verified) {
            (
                _,
                Err(
                    e @ UnpackError::Verify {
                        source:
                            DigestError::Mismatch { .. }
                            | DigestError::SizeMismatch { .. }
                            | DigestError::TooLarge { .. },
                        ..
                    },
                ),
            ) => {
                return Err(e);
            }
            (Err(e), _) | (Ok(()), Err(e)) => return Err(e),
            (Ok(()), Ok(_)) => {}
        }
        let mut dirs: Vec<_> = layer_state.dir_mtimes.into_iter().collect();
        dirs.sort();
        for (key, mtime) in dirs {
            let parts: Vec<&[u8]> = key.split(|&b| b == b'/').collect();
            if let Ok(fd) = self.open_dir_path(&parts, None) {
                let _ =
                    rustix::fs::futimens(&fd, &Timestamps { last_access: mtime, last_modification: mtime });
            }
        }
        Ok(())
    }

    fn apply_entries<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
        layer: Digest,
        state: &mut LayerState,
    ) -> Result<()> {
        let read_err = |source| UnpackError::Read { layer, source };
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            self.report.n_entries += 1;
            if self.report.n_entries > self.opts.max_entries {
                return Err(UnpackError::TooManyEntries { limit: self.opts.max_entries });
            }
            let raw_path = entry.path_bytes().into_owned();
            self.apply_entry(&mut entry, &raw_path, state).map_err(|fail| match fail {
                Fail::Refused(reason) => UnpackError::Entry {
                    layer,
                    path: String::from_utf8_lossy(&raw_path).into_owned(),
                    reason,
                },
                Fail::Io(e) => UnpackError::Entry {
                    layer,
                    path: String::from_utf8_lossy(&raw_path).into_owned(),
                    reason: e.to_string(),
                },
                Fail::TooLarge => UnpackError::TooLarge { limit: self.opts.max_unpacked_size },
                Fail::DiskFull { needed, free } => {
                    UnpackError::DiskFull { needed, free, reserve: self.opts.reserve_free }
                }
            })?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &[u8],
        state: &mut LayerState,
    ) -> FResult<()> {
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            return Ok(());
        }
        let parts = path::components(raw_path).map_err(refused)?;
        let Some((name, parents)) = parts.split_last() else {
            // `./` itself: the root keeps the mode we gave it.
            return Ok(());
        };
        let name: &[u8] = name;

        if let Some(hidden) = name.strip_prefix(b".wh.") {
            return self.apply_whiteout(parents, hidden, state);
        }

        let parent = self.open_dir_path(parents, Some(state))?;
        state.present.insert(key_of(&parts));
        let meta = self.entry_meta(entry)?;
        match entry_type {
            t if t.is_dir() => {
                let dir = match stat_at(&parent, name)? {
                    Some(FileType::Directory) => open_dir_at(&parent, name)?,
                    existing => {
                        if existing.is_some() {
                            remove_at(&parent, name)?;
                        }
                        rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))?;
                        open_dir_at(&parent, name)?
                    }
                };
                self.set_owner(&parent, name, &meta, &parts)?;
                rustix::fs::fchmod(&dir, Mode::from_raw_mode(meta.mode))?;
                self.set_xattrs(&dir, &meta, &parts);
                state.dir_mtimes.insert(key_of(&parts), meta.mtime);
            }
            t if t.is_file() || t.is_contiguous() => {
                let size = entry.size();
                if size > self.budget {
                    return Err(Fail::TooLarge);
                }
                self.budget -= size;
                if size > 0 {
                    check_free(&self.root, size, self.opts.reserve_free)?;
                }
                remove_at(&parent, name)?;
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                let mut file = File::from(fd);
                copy_content(entry, &mut file)?;
                self.set_owner(&parent, name, &meta, &parts)?;
                rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))?;
                self.set_xattrs(&file, &meta, &parts);
                rustix::fs::futimens(&file, &times(meta.mtime))?;
            }
            t if t.is_symlink() => {
                let target = entry.link_name_bytes().ok_or_else(|| refused("symlink has no target"))?;
                if target.is_empty() || target.contains(&0) {
                    return Err(refused("symlink target is empty or holds a NUL byte"));
                }
                remove_at(&parent, name)?;
                rustix::fs::symlinkat(&*target, &parent, name)?;
                self.set_owner(&parent, name, &meta, &parts)?;
                rustix::fs::utimensat(&parent, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            t if t.is_hard_link() => {
                let target = entry.link_name_bytes().ok_or_else(|| refused("hard link has no target"))?;
                let target_parts =
                    path::components(&target).map_err(|r| refused(format!("hard link target: {r}")))?;
                let Some((target_name, target_parents)) = target_parts.split_last() else {
                    return Err(refused("hard link target is the root directory"));
                };
                if target_parts == parts {
                    return Ok(());
                }
                let shown = show(&target_parts);
                let target_dir = self.open_dir_path(target_parents, None).map_err(|f| match f {
                    Fail::Refused(r) => refused(format!("hard link target {shown:?}: {r}")),
                    Fail::Io(e) if e.kind() == io::ErrorKind::NotFound => {
                        refused(format!("hard link target {shown:?} does not exist (yet)"))
                    }
                    other => other,
                })?;
                match stat_at(&target_dir, target_name)? {
                    None => return Err(refused(format!("hard link target {shown:?} does not exist (yet)"))),
                    Some(FileType::Directory) => {
                        return Err(refused(format!("hard link target {shown:?} is a directory")));
                    }
                    Some(_) => {}
                }
                remove_at(&parent, name)?;
                // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
                rustix::fs::linkat(&target_dir, *target_name, &parent, name, AtFlags::empty())?;
            }
            t if t.is_character_special() || t.is_block_special() || t.is_fifo() => {
                let file_type = if t.is_character_special() {
                    FileType::CharacterDevice
                } else if t.is_block_special() {
                    FileType::BlockDevice
                } else {
                    FileType::Fifo
                };
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                remove_at(&parent, name)?;
                match rustix::fs::mknodat(
                    &parent,
                    name,
                    file_type,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                ) {
                    Ok(()) => {}
                    Err(Errno::PERM) => {
                        self.warn(format!(
                            "skipped device node /{}: not permitted to create it",
                            show(&parts)
                        ));
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
                self.set_owner(&parent, name, &meta, &parts)?;
                // The node was just made by mknodat, so it is not a symlink to follow.
                rustix::fs::chmodat(&parent, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())?;
                rustix::fs::utimensat(&parent, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            t if t.is_gnu_sparse() => return Err(refused("sparse files are not supported")),
            t => return Err(refused(format!("unsupported entry type {t:?}"))),
        }
        Ok(())
    }

    fn apply_whiteout(&mut self, parents: &[&[u8]], hidden: &[u8], state: &mut LayerState) -> FResult<()> {
        if hidden == b".wh..opq" {
            let dir = self.open_dir_path(parents, Some(state))?;
            return self.prune_opaque(&dir, &key_of(parents), state, 0);
        }
        if hidden.starts_with(b".wh.") {
            // Other `.wh..wh.` names are AUFS bookkeeping with no meaning here.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(refused("whiteout names no file"));
        }
        let mut key = key_of(parents);
        if !key.is_empty() {
            key.push(b'/');
        }
        key.extend_from_slice(hidden);
        if state.present.contains(&key) {
            // Whiteouts hide lower layers only, never this layer's own entries.
            return Ok(());
        }
        match self.open_dir_path(parents, None) {
            Ok(dir) => remove_at(&dir, hidden),
            // Nothing below to hide.
            Err(Fail::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes what lower layers put in `dir`, keeping this layer's entries (and, inside
    /// directories this layer touched, again only its own entries).
    fn prune_opaque(
        &mut self,
        dir: &OwnedFd,
        dir_key: &[u8],
        state: &LayerState,
        depth: usize,
    ) -> FResult<()> {
        if depth > path::MAX_DEPTH {
            return Err(refused("directory tree is too deep"));
        }
        for child in list_dir(dir)? {
            let mut key = dir_key.to_vec();
            if !key.is_empty() {
                key.push(b'/');
            }
            key.extend_from_slice(&child);
            if !state.present.contains(&key) {
                remove_at(dir, &child)?;
            } else if stat_at(dir, &child)? == Some(FileType::Directory) {
                let sub = open_dir_at(dir, &child)?;
                self.prune_opaque(&sub, &key, state, depth + 1)?;
            }
        }
        Ok(())
    }

    /// Opens the directory at `parts` under the root without following any symlink.
    /// With `create`, missing directories are made (mode 0755, as container runtimes
    /// do) and every component is recorded as present in this layer.
    fn open_dir_path(&self, parts: &[&[u8]], mut create: Option<&mut LayerState>) -> FResult<OwnedFd> {
        let mut current: Option<OwnedFd> = None;
        for (idx, part) in parts.iter().enumerate() {
            let dir = current.as_ref().map_or(self.root.as_fd(), |fd| fd.as_fd());
            let next = match open_dir_at(&dir, part) {
                Ok(fd) => fd,
                Err(Fail::Io(e)) if e.kind() == io::ErrorKind::NotFound && create.is_some() => {
                    rustix::fs::mkdirat(dir, *part, Mode::from_raw_mode(0o755))?;
                    let fd = open_dir_at(&dir, part)?;
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
                    fd
                }
                Err(Fail::Io(e)) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    let prefix = show(&parts[..=idx]);
                    return Err(match stat_at(&dir, part)? {
                        Some(FileType::Symlink) => refused(format!(
                            "path goes through the symlink {prefix:?}; links are never followed while unpacking"
                        )),
                        _ => refused(format!("{prefix:?} is not a directory")),
                    });
                }
                Err(e) => return Err(e),
            };
            if let Some(state) = create.as_deref_mut() {
                state.present.insert(key_of(&parts[..=idx]));
            }
            current = Some(next);
        }
        match current {
            Some(fd) => Ok(fd),
            None => Ok(rustix::fs::openat(
                &self.root,
                c".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?),
        }
    }

    fn entry_meta<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> FResult<EntryMeta> {
        let header = entry.header();
        let bad = |what: &str| refused(format!("unreadable {what} in the tar header"));
        let mut uid = header.uid().map_err(|_| bad("uid"))?;
        let mut gid = header.gid().map_err(|_| bad("gid"))?;
        let mut mtime =
            Timespec { tv_sec: clamp_secs(header.mtime().map_err(|_| bad("mtime"))?), tv_nsec: 0 };
        let mode = header.mode().map_err(|_| bad("mode"))? & 0o7777;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value().ok();
                match key {
                    "uid" => uid = value.and_then(|v| v.parse().ok()).ok_or_else(|| bad("PAX uid"))?,
                    "gid" => gid = value.and_then(|v| v.parse().ok()).ok_or_else(|| bad("PAX gid"))?,
                    "mtime" => mtime = value.and_then(parse_pax_time).ok_or_else(|| bad("PAX mtime"))?,
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        let to_id = |v: u64, what: &str| {
            u32::try_from(v)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| refused(format!("{what} {v} is out of range")))
        };
        Ok(EntryMeta { mode, uid: to_id(uid, "uid")?, gid: to_id(gid, "gid")?, mtime, xattrs })
    }

    fn set_owner(&mut self, dir: &OwnedFd, name: &[u8], meta: &EntryMeta, parts: &[&[u8]]) -> FResult<()> {
        if !self.opts.same_owner {
            return Ok(());
        }
        let owner = rustix::fs::Uid::from_raw(meta.uid);
        let group = rustix::fs::Gid::from_raw(meta.gid);
        match rustix::fs::chownat(dir, name, Some(owner), Some(group), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(()) => Ok(()),
            // In a user namespace without that id mapped: keep going as the caller.
            Err(Errno::INVAL | Errno::PERM) => {
                self.warn(format!("/{}: could not give it owner {}:{}", show(parts), meta.uid, meta.gid));
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn set_xattrs(&mut self, fd: &impl AsFd, meta: &EntryMeta, parts: &[&[u8]]) {
        for (name, value) in &meta.xattrs {
            // Only what a container legitimately carries: trusted.* and security labels
            // would speak to the host's overlayfs or LSM.
            if !(name.starts_with("user.") || name == "security.capability") {
                self.warn(format!("/{}: skipped xattr {name}", show(parts)));
                continue;
            }
            if let Err(e) = rustix::fs::fsetxattr(fd, name.as_str(), value, rustix::fs::XattrFlags::empty()) {
                self.warn(format!("/{}: could not set xattr {name}: {e}", show(parts)));
            }
        }
    }
}

fn copy_content(reader: &mut impl Read, file: &mut File) -> FResult<()> {
    let mut writer = io::BufWriter::with_capacity(128 * 1024, file);
    io::copy(reader, &mut writer)?;
    writer.flush()?;
    Ok(())
}

fn clamp_secs(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// PAX times are decimal seconds with an optional fraction: `1700000000.5`.
fn parse_pax_time(s: &str) -> Option<Timespec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let tv_nsec = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().ok()? };
    Some(Timespec { tv_sec, tv_nsec })
}

fn times(mtime: Timespec) -> Timestamps {
    Timestamps { last_access: mtime, last_modification: mtime }
}

fn open_dir_at(dir: &impl AsFd, name: &[u8]) -> FResult<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The type of `name` in `dir` (not following a symlink), or `None` if absent.
fn stat_at(dir: &impl AsFd, name: &[u8]) -> FResult<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn list_dir(dir: &OwnedFd) -> FResult<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes `name` from `dir`, whatever it is, descending into directories by
/// descriptor so that no symlink inside is ever followed.
fn remove_at(dir: &impl AsFd, name: &[u8]) -> FResult<()> {
    remove_at_depth(dir.as_fd(), name, 0)
}

fn remove_at_depth(dir: BorrowedFd<'_>, name: &[u8], depth: usize) -> FResult<()> {
    match stat_at(&dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            if depth > 4 * path::MAX_DEPTH {
                return Err(refused("directory tree is too deep to remove"));
            }
            let sub = open_dir_at(&dir, name)?;
            for child in list_dir(&sub)? {
                remove_at_depth(sub.as_fd(), &child, depth + 1)?;
            }
            Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
        }
        Some(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// Apparent size of regular files (each inode once) plus symlinks.
fn tree_size(dir: &Path) -> io::Result<u64> {
    fn walk(dir: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = fs::symlink_metadata(entry.path())?;
            if meta.is_dir() {
                walk(&entry.path(), seen, total)?;
            } else if (meta.is_file() && seen.insert((meta.dev(), meta.ino()))) || meta.is_symlink() {
                *total += meta.len();
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(dir, &mut HashSet::new(), &mut total)?;
    Ok(total)
}

/// Deletes an unpacked root filesystem. It is first renamed aside, so a crash midway
/// never leaves a half-deleted tree under the real name; the removal itself never
/// follows symlinks. Missing is fine.
pub fn remove_rootfs(target: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(target)(e)),
    };
    if !meta.is_dir() {
        return Err(UnpackError::Target {
            path: target.to_path_buf(),
            reason: "is not a directory; refusing to remove it".into(),
        });
    }
    let (parent, name) = split_target(target)?;
    let _lock = lock_dir(parent)?;
    let doomed = parent.join(format!(".{name}.removing"));
    if fs::symlink_metadata(&doomed).is_ok() {
        fs::remove_dir_all(&doomed).map_err(io_err(&doomed))?;
    }
    fs::rename(target, &doomed).map_err(io_err(target))?;
    File::open(parent).and_then(|d| d.sync_all()).map_err(io_err(parent))?;
    // std's remove_dir_all works by descriptor and does not follow symlinks.
    fs::remove_dir_all(&doomed).map_err(io_err(&doomed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("12").unwrap(), Timespec { tv_sec: 12, tv_nsec: 0 });
        assert_eq!(parse_pax_time("12.5").unwrap(), Timespec { tv_sec: 12, tv_nsec: 500_000_000 });
        assert_eq!(parse_pax_time("-1.000000001").unwrap(), Timespec { tv_sec: -1, tv_nsec: 1 });
        assert!(parse_pax_time("x").is_none());
        assert!(parse_pax_time("1.x").is_none());
    }
}
