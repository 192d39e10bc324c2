//! Writes layers and OCI image layouts deterministically: the same inputs give the same
//! bytes, hence the same digests (sorted entries, owner 0:0, one fixed mtime, a gzip
//! header with no name or time). Used by `cargo xtask images` and by tests.

use crate::blobstore::{BlobError, BlobStore};
use crate::digest::{Digest, DigestWriter};
use crate::oci::{
    self, ANNOTATION_REF_NAME, Compression, Descriptor, ImageConfig, ImageIndex, ImageManifest, OciLayout,
    Platform, RootFs,
};
use crate::path;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("layer entry {path:?}: {reason}")]
    Entry { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("SOURCE_DATE_EPOCH={0:?} is not a number of seconds; unset it or fix it")]
    SourceDateEpoch(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

type Result<T, E = BuildError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.to_path_buf(), source }
}

/// `SOURCE_DATE_EPOCH` from the environment (the reproducible-builds convention), or 0.
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if v.trim().is_empty() => Ok(0),
        Ok(v) => v.trim().parse().map_err(|_| BuildError::SourceDateEpoch(v)),
        Err(_) => Ok(0),
    }
}

/// `2024-05-01T12:00:00Z` for a Unix time, as image configs write `created`.
pub fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[derive(Debug, Clone)]
enum LayerEntry {
    Dir { mode: u32 },
    File { contents: FileContents, mode: u32 },
    Symlink { target: String },
    Hardlink { target: String },
}

#[derive(Debug, Clone)]
enum FileContents {
    Bytes(Vec<u8>),
    Disk(PathBuf),
}

/// Collects entries for one layer, then writes them as a tar sorted by path. Paths may
/// be given with or without a leading `/`; missing parent directories are added (0755).
#[derive(Debug, Clone)]
pub struct LayerBuilder {
    entries: BTreeMap<String, LayerEntry>,
    mtime: u64,
    compression: Compression,
    /// The first bad path, reported by `build` so that adding stays chainable.
    error: Option<(String, &'static str)>,
}

/// A finished layer held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    /// The blob: the compressed tar.
    pub bytes: Vec<u8>,
    pub digest: Digest,
    /// Digest of the uncompressed tar, as the image config lists it.
    pub diff_id: Digest,
    pub media_type: &'static str,
}

impl BuiltLayer {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.media_type, self.digest, self.bytes.len() as u64)
    }
}

/// Digests of a layer streamed to a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDigests {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        LayerBuilder { entries: BTreeMap::new(), mtime: 0, compression: Compression::Gzip, error: None }
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The mtime of every entry, normally [`source_date_epoch`]. Default 0.
    pub fn mtime(mut self, secs: u64) -> Self {
        self.mtime = secs;
        self
    }

    /// Default gzip; zstd is buffered in memory (tests only need small ones).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    fn insert(&mut self, path: &str, entry: LayerEntry) -> &mut Self {
        match normalize(path) {
            Ok(p) if !p.is_empty() => {
                self.entries.insert(p, entry);
            }
            Ok(_) => self.fail(path, "the root directory cannot be an entry"),
            Err(reason) => self.fail(path, reason),
        }
        self
    }

    fn fail(&mut self, path: &str, reason: &'static str) {
        if self.error.is_none() {
            self.error = Some((path.to_string(), reason));
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.insert(path, LayerEntry::Dir { mode })
    }

    pub fn file(&mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.insert(path, LayerEntry::File { contents: FileContents::Bytes(contents.into()), mode })
    }

    /// A file whose contents are read from `source` when the layer is written.
    pub fn file_from_disk(&mut self, path: &str, source: impl Into<PathBuf>, mode: u32) -> &mut Self {
        self.insert(path, LayerEntry::File { contents: FileContents::Disk(source.into()), mode })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.insert(path, LayerEntry::Symlink { target: target.to_string() })
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        match normalize(target) {
            Ok(t) if !t.is_empty() => self.insert(path, LayerEntry::Hardlink { target: t }),
            Ok(_) => {
                self.fail(target, "a hard link cannot point at the root directory");
                self
            }
            Err(reason) => {
                self.fail(target, reason);
                self
            }
        }
    }

    /// Hides `path` from lower layers (`.wh.<name>`).
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        match normalize(path) {
            Ok(p) if !p.is_empty() => {
                let (dir, name) = p.rsplit_once('/').map_or(("", p.as_str()), |(d, n)| (d, n));
                let wh = if dir.is_empty() { format!(".wh.{name}") } else { format!("{dir}/.wh.{name}") };
                self.insert(&wh, LayerEntry::File { contents: FileContents::Bytes(Vec::new()), mode: 0o644 })
            }
            Ok(_) => {
                self.fail(path, "the root directory cannot be whited out");
                self
            }
            Err(reason) => {
                self.fail(path, reason);
                self
            }
        }
    }

    /// Hides everything lower layers put in `dir` (`.wh..wh..opq`).
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        let marker = format!("{}/.wh..wh..opq", dir.trim_end_matches('/'));
        self.insert(&marker, LayerEntry::File { contents: FileContents::Bytes(Vec::new()), mode: 0o644 })
    }

    /// Writes the layer into memory.
    pub fn build(&self) -> Result<BuiltLayer> {
        let (bytes, digests) = self.write_to(Vec::new())?;
        Ok(BuiltLayer {
            bytes,
            digest: digests.digest,
            diff_id: digests.diff_id,
            media_type: media_type(self.compression),
        })
    }

    /// Streams the compressed layer into `out`, returning `out` and the digests.
    pub fn write_to<W: Write>(&self, out: W) -> Result<(W, LayerDigests)> {
        if let Some((path, reason)) = &self.error {
            return Err(BuildError::Entry { path: path.clone(), reason: reason.to_string() });
        }
        let werr = |source| BuildError::Write { what: "the layer".into(), source };
        let outer = DigestWriter::new(out);
        let (outer, diff_id) = match self.compression {
            Compression::None => {
                let tar = self.write_tar(DigestWriter::new(outer))?;
                let (outer, diff_id, _) = tar.finish();
                (outer, diff_id)
            }
            Compression::Gzip => {
                let gz = flate2::GzBuilder::new().write(outer, flate2::Compression::default());
                let tar = self.write_tar(DigestWriter::new(gz))?;
                let (gz, diff_id, _) = tar.finish();
                (gz.finish().map_err(werr)?, diff_id)
            }
            Compression::Zstd => {
                let tar = self.write_tar(DigestWriter::new(Vec::new()))?;
                let (tar_bytes, diff_id, _) = tar.finish();
                let mut outer = outer;
                let compressed = ruzstd::encoding::compress_to_vec(
                    &tar_bytes[..],
                    ruzstd::encoding::CompressionLevel::Fastest,
                );
                outer.write_all(&compressed).map_err(werr)?;
                (outer, diff_id)
            }
        };
        let (mut out, digest, size) = outer.finish();
        out.flush().map_err(werr)?;
        Ok((out, LayerDigests { digest, diff_id, size }))
    }

    fn write_tar<W: Write>(&self, w: W) -> Result<W> {
        let werr = |source| BuildError::Write { what: "the layer".into(), source };
        let mut entries = self.entries.clone();
        for path in self.entries.keys() {
            let mut parent = path.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                entries.entry(p.to_string()).or_insert(LayerEntry::Dir { mode: 0o755 });
                parent = p;
            }
        }
        let mut builder = tar::Builder::new(w);
        for (path, entry) in &entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(self.mtime);
            match entry {
                LayerEntry::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{path}/"), io::empty()).map_err(werr)?;
                }
                LayerEntry::File { contents, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    match contents {
                        FileContents::Bytes(bytes) => {
                            header.set_size(bytes.len() as u64);
                            builder.append_data(&mut header, path, &bytes[..]).map_err(werr)?;
                        }
                        FileContents::Disk(source) => {
                            let file = File::open(source).map_err(io_err(source))?;
                            let meta = file.metadata().map_err(io_err(source))?;
                            if !meta.is_file() {
                                return Err(BuildError::Entry {
                                    path: path.clone(),
                                    reason: format!("{} is not a regular file", source.display()),
                                });
                            }
                            header.set_size(meta.len());
                            // `take` guards against the file growing while it is copied.
                            builder
                                .append_data(&mut header, path, io::BufReader::new(file).take(meta.len()))
                                .map_err(werr)?;
                        }
                    }
                }
                LayerEntry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).map_err(werr)?;
                }
                LayerEntry::Hardlink { target } => {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_mode(0o644);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).map_err(werr)?;
                }
            }
        }
        builder.into_inner().map_err(werr)
    }
}

fn media_type(compression: Compression) -> &'static str {
    match compression {
        Compression::None => oci::MEDIA_TYPE_OCI_LAYER,
        Compression::Gzip => oci::MEDIA_TYPE_OCI_LAYER_GZIP,
        Compression::Zstd => oci::MEDIA_TYPE_OCI_LAYER_ZSTD,
    }
}

/// `/usr//bin/` → `usr/bin`; refuses `..`.
fn normalize(p: &str) -> Result<String, &'static str> {
    let parts = path::components(p.trim_start_matches('/').as_bytes())?;
    let parts: Vec<&str> = parts.iter().map(|c| std::str::from_utf8(c).expect("split from a str")).collect();
    Ok(parts.join("/"))
}

/// Writes an OCI image layout directory: blobs, one manifest per image added, and an
/// `index.json` listing them.
pub struct ImageLayoutWriter {
    dir: PathBuf,
    blobs: BlobStore,
    manifests: Vec<Descriptor>,
}

impl ImageLayoutWriter {
    /// Starts a layout in `dir`, which must not exist or be empty.
    pub fn create(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        if fs::read_dir(dir).map_err(io_err(dir))?.next().is_some() {
            return Err(BuildError::Io {
                path: dir.to_path_buf(),
                source: io::Error::new(io::ErrorKind::AlreadyExists, "directory is not empty"),
            });
        }
        let blobs = BlobStore::open(dir)?;
        let layout = serde_json::to_vec(&OciLayout::default()).expect("plain struct serialises");
        write_file(&dir.join(oci::OCI_LAYOUT_FILE), &layout)?;
        Ok(ImageLayoutWriter { dir: dir.to_path_buf(), blobs, manifests: Vec::new() })
    }

    pub fn blob_store(&self) -> &BlobStore {
        &self.blobs
    }

    pub fn add_blob(&mut self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let digest = self.blobs.put_bytes(bytes)?;
        Ok(Descriptor::new(media_type, digest, bytes.len() as u64))
    }

    /// Adds an image made of `layers` (bottom first). `config.rootfs` is filled in from
    /// the layers; `ref_name` becomes the `org.opencontainers.image.ref.name` annotation.
    pub fn add_image(
        &mut self,
        mut config: ImageConfig,
        layers: &[BuiltLayer],
        ref_name: Option<&str>,
    ) -> Result<Descriptor> {
        let mut layer_descs = Vec::with_capacity(layers.len());
        for layer in layers {
            layer_descs.push(self.add_blob(layer.media_type, &layer.bytes)?);
        }
        config.rootfs = RootFs::layers(layers.iter().map(|l| l.diff_id).collect());
        let config_json = serde_json::to_vec(&config).expect("plain struct serialises");
        let config_desc = self.add_blob(oci::MEDIA_TYPE_OCI_CONFIG, &config_json)?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_TYPE_OCI_MANIFEST.to_string()),
            config: config_desc,
            layers: layer_descs,
            annotations: BTreeMap::new(),
        };
        let manifest_json = serde_json::to_vec(&manifest).expect("plain struct serialises");
        let mut desc = self.add_blob(oci::MEDIA_TYPE_OCI_MANIFEST, &manifest_json)?;
        desc.platform = Some(Platform {
            architecture: config.architecture.clone(),
            os: config.os.clone(),
            variant: config.variant.clone(),
            ..Default::default()
        });
        if let Some(name) = ref_name {
            desc.annotations.insert(ANNOTATION_REF_NAME.to_string(), name.to_string());
        }
        self.manifests.push(desc.clone());
        Ok(desc)
    }

    /// Writes `index.json` and returns its digest.
    pub fn finish(self) -> Result<Digest> {
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(oci::MEDIA_TYPE_OCI_INDEX.to_string()),
            manifests: self.manifests,
            annotations: BTreeMap::new(),
        };
        let json = serde_json::to_vec(&index).expect("plain struct serialises");
        write_file(&self.dir.join(oci::INDEX_FILE), &json)?;
        Ok(Digest::of(&json))
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Writes a tar of the layout in `layout_dir` (`oci-layout`, `index.json`, `blobs/`
/// only), entries sorted, owner 0:0, modes 0644/0755 and every mtime `mtime`.
pub fn write_archive<W: Write>(layout_dir: &Path, out: W, mtime: u64) -> Result<W> {
    let werr = |source| BuildError::Write { what: "the image archive".into(), source };
    let blob_dir = layout_dir.join("blobs/sha256");
    let mut entries: Vec<(String, Option<PathBuf>)> = vec![
        ("blobs/".into(), None),
        ("blobs/sha256/".into(), None),
        (oci::INDEX_FILE.into(), Some(layout_dir.join(oci::INDEX_FILE))),
        (oci::OCI_LAYOUT_FILE.into(), Some(layout_dir.join(oci::OCI_LAYOUT_FILE))),
    ];
    for entry in fs::read_dir(&blob_dir).map_err(io_err(&blob_dir))? {
        let entry = entry.map_err(io_err(&blob_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if Digest::from_hex(&name).is_some() {
            entries.push((format!("blobs/sha256/{name}"), Some(entry.path())));
        }
    }
    entries.sort();
    let mut builder = tar::Builder::new(out);
    for (name, source) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        match source {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, &name, io::empty()).map_err(werr)?;
            }
            Some(path) => {
                let file = File::open(&path).map_err(io_err(&path))?;
                let len = file.metadata().map_err(io_err(&path))?.len();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(len);
                builder.append_data(&mut header, &name, io::BufReader::new(file).take(len)).map_err(werr)?;
            }
        }
    }
    builder.into_inner().map_err(werr)
}

/// An image archive written by [`write_image_archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenImage {
    pub path: PathBuf,
    /// Digest of `index.json`, what an import reports as the image's digest.
    pub index_digest: Digest,
    pub manifest_digest: Digest,
    /// Bytes of the archive file.
    pub size: u64,
}

static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes a one-platform image as an OCI layout archive at `out`, atomically (a
/// scratch layout directory and a temp file next to `out` are used, then removed).
pub fn write_image_archive(
    out: &Path,
    ref_name: &str,
    config: ImageConfig,
    layers: &[BuiltLayer],
    mtime: u64,
) -> Result<WrittenImage> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let file_name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let unique = format!("{}-{}", std::process::id(), SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed));
    let scratch = parent.join(format!(".{file_name}.layout-{unique}"));
    let temp = parent.join(format!(".{file_name}.tmp-{unique}"));
    let result = (|| {
        let mut writer = ImageLayoutWriter::create(&scratch)?;
        let manifest = writer.add_image(config, layers, Some(ref_name))?;
        let index_digest = writer.finish()?;
        let file = File::create(&temp).map_err(io_err(&temp))?;
        let file = write_archive(&scratch, io::BufWriter::new(file), mtime)?
            .into_inner()
            .map_err(|e| io_err(&temp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&temp))?;
        let size = file.metadata().map_err(io_err(&temp))?.len();
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o644)).map_err(io_err(&temp))?;
        fs::rename(&temp, out).map_err(io_err(out))?;
        Ok(WrittenImage { path: out.to_path_buf(), index_digest, manifest_digest: manifest.digest, size })
    })();
    let _ = fs::remove_dir_all(&scratch);
    let _ = fs::remove_file(&temp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn bad_paths_fail_the_build() {
        let mut b = LayerBuilder::new();
        b.file("ok", "x", 0o644).file("../escape", "x", 0o644);
        let err = b.build().unwrap_err().to_string();
        assert!(err.contains("../escape"), "{err}");
    }

    #[test]
    fn parents_are_added_and_entries_sorted() {
        let mut b = LayerBuilder::new().compression(Compression::None);
        b.file("/usr/bin/tool", "#!", 0o755).symlink("bin", "usr/bin").dir("etc", 0o700);
        let layer = b.build().unwrap();
        assert_eq!(layer.digest, layer.diff_id);
        let mut archive = tar::Archive::new(&layer.bytes[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect();
        assert_eq!(names, ["bin", "etc/", "usr/", "usr/bin/", "usr/bin/tool"]);
    }
}
