//! Imports an OCI image layout, from a directory or from a (gzip/zstd-compressed) tar
//! archive of one, into a [`BlobStore`], verifying every blob on the way in.
//!
//! The input is untrusted: every size and count is bounded by [`ImportLimits`], archive
//! entries must be plain files or directories with clean relative names, and nothing is
//! parsed from a blob before its digest is checked.

use crate::blobstore::{BlobError, BlobStore};
use crate::digest::Digest;
use crate::oci::{
    self, ANNOTATION_REF_NAME, Descriptor, INDEX_FILE, ImageConfig, ImageIndex, ImageManifest, MediaKind,
    OCI_LAYOUT_FILE, OciLayout,
};
use crate::path;
use serde::de::DeserializeOwned;
use shared_proto::agent_state::ImageRunConfig;
use shared_proto::resource::{ImagePlatform, ImageSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_path_to_error::Error<serde_json::Error>,
    },
    #[error(
        "{what}: blob {digest} is missing from the image layout; export the image again with all its blobs"
    )]
    Missing { what: String, digest: Digest },
    #[error("{what}: blob {digest} is {actual} bytes but its descriptor says {expected}")]
    SizeMismatch { what: String, digest: Digest, expected: u64, actual: u64 },
    #[error("{what} is larger than the {limit}-byte import limit")]
    TooLarge { what: String, limit: u64 },
    #[error("archive entry {name:?}: {reason}")]
    Entry { name: String, reason: String },
    #[error("{what}: {source}")]
    Blob {
        what: String,
        #[source]
        source: Box<BlobError>,
    },
    #[error("reading the image archive: {0}; is it a complete tar, tar.gz or tar.zst file?")]
    Archive(#[source] io::Error),
    #[error("reading {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = LayoutError> = std::result::Result<T, E>;

fn blob_err(what: impl Into<String>) -> impl FnOnce(BlobError) -> LayoutError {
    let what = what.into();
    move |source| LayoutError::Blob { what, source: Box::new(source) }
}

fn invalid(what: impl Into<String>, reason: impl Into<String>) -> LayoutError {
    LayoutError::Invalid { what: what.into(), reason: reason.into() }
}

/// Bounds on what an import accepts. The defaults fit real images with a wide margin.
#[derive(Debug, Clone)]
pub struct ImportLimits {
    pub max_blob_size: u64,
    /// Sum of every blob in the input.
    pub max_total_size: u64,
    /// `index.json`, manifests and configs are parsed in memory.
    pub max_json_size: u64,
    /// Descriptors in all indexes together.
    pub max_manifests: usize,
    pub max_layers: usize,
    pub max_archive_entries: u64,
    pub max_index_depth: usize,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_blob_size: 8 << 30,
            max_total_size: 32 << 30,
            max_json_size: 4 << 20,
            max_manifests: 64,
            max_layers: 256,
            max_archive_entries: 100_000,
            max_index_depth: 4,
        }
    }
}

/// An image imported into a blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// Digest of the layout's `index.json`, which is also stored as a blob. It names
    /// this exact export: the same image re-exported by another tool gets another one,
    /// while its manifest digests stay the same.
    pub index_digest: Digest,
    /// `org.opencontainers.image.ref.name` from `index.json`: `demo-httpd:latest`, or
    /// only a tag for some tools.
    pub ref_name: Option<String>,
    /// Sorted by os, architecture and variant.
    pub platforms: Vec<PlatformImage>,
    /// Every blob the image references (`index.json` included), sorted.
    pub blobs: Vec<Digest>,
    /// Blobs an archive carried that nothing references and that were not in the store
    /// before. They are left in place (another import may be using them by now); remove
    /// them if nothing else can.
    pub unreferenced_blobs: Vec<Digest>,
}

/// One platform's image manifest, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformImage {
    pub os: String,
    pub architecture: String,
    /// Empty when the image names none.
    pub variant: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// In application order, bottom first.
    pub layers: Vec<Descriptor>,
    /// Digests of the uncompressed layers, from the config.
    pub diff_ids: Vec<Digest>,
    /// Manifest, config and layer bytes together.
    pub total_size: u64,
    pub run_config: ImageRunConfig,
}

impl PlatformImage {
    pub fn to_image_platform(&self) -> ImagePlatform {
        ImagePlatform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
            manifest_digest: self.manifest_digest.to_string(),
            size: self.total_size,
        }
    }
}

impl ImportedImage {
    pub fn to_image_spec(&self) -> ImageSpec {
        ImageSpec {
            digest: self.index_digest.to_string(),
            platforms: self.platforms.iter().map(PlatformImage::to_image_platform).collect(),
        }
    }

    /// The platform image for `os`/`architecture`; an empty `variant` matches any.
    pub fn platform(&self, os: &str, architecture: &str, variant: &str) -> Option<&PlatformImage> {
        self.platforms.iter().find(|p| {
            p.os == os && p.architecture == architecture && (variant.is_empty() || p.variant == variant)
        })
    }
}

/// Imports from a layout directory, or from an archive file of one.
pub fn import_path(path: &Path, store: &BlobStore, limits: &ImportLimits) -> Result<ImportedImage> {
    let what = || path.display().to_string();
    let meta = fs::metadata(path).map_err(|source| LayoutError::Io { what: what(), source })?;
    if meta.is_dir() {
        import_dir(path, store, limits)
    } else {
        let file = File::open(path).map_err(|source| LayoutError::Io { what: what(), source })?;
        import_archive(io::BufReader::with_capacity(256 * 1024, file), store, limits)
    }
}

/// Imports a layout directory. Only referenced blobs are copied; symlinks are refused.
pub fn import_dir(dir: &Path, store: &BlobStore, limits: &ImportLimits) -> Result<ImportedImage> {
    let layout = read_layout_file(dir, OCI_LAYOUT_FILE, 64 << 10)?;
    check_oci_layout(&layout)?;
    let index = read_layout_file(dir, INDEX_FILE, limits.max_json_size)?;
    for sub in ["blobs", "blobs/sha256"] {
        let p = dir.join(sub);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(invalid(sub, "must be a directory (symlinks are not followed)")),
            Err(source) => return Err(LayoutError::Io { what: p.display().to_string(), source }),
        }
    }
    let mut source = DirSource { blobs: dir.join("blobs/sha256") };
    resolve(&index, &mut source, store, limits, &BTreeSet::new())
}

fn read_layout_file(dir: &Path, name: &str, max: u64) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let file =
        OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&path).map_err(
            |source| match source.kind() {
                io::ErrorKind::NotFound => invalid(
                    dir.display().to_string(),
                    format!("no {name} file; is this an OCI image layout directory?"),
                ),
                _ if source.raw_os_error() == Some(libc::ELOOP) => {
                    invalid(name, "is a symlink; refusing to follow it")
                }
                _ => LayoutError::Io { what: path.display().to_string(), source },
            },
        )?;
    if !file.metadata().map_err(|source| LayoutError::Io { what: name.into(), source })?.is_file() {
        return Err(invalid(name, "is not a regular file"));
    }
    read_bounded(file, name, max)
}

fn read_bounded(reader: impl Read, what: &str, max: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| LayoutError::Io { what: what.into(), source })?;
    if bytes.len() as u64 > max {
        return Err(LayoutError::TooLarge { what: what.into(), limit: max });
    }
    Ok(bytes)
}

fn check_oci_layout(bytes: &[u8]) -> Result<()> {
    let layout: OciLayout = parse_json(OCI_LAYOUT_FILE, bytes)?;
    if !layout.image_layout_version.starts_with("1.") {
        return Err(invalid(
            OCI_LAYOUT_FILE,
            format!("image layout version {:?} is not supported (want 1.x)", layout.image_layout_version),
        ));
    }
    Ok(())
}

fn parse_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|source| LayoutError::Json { what: what.into(), source })
}

/// Imports a tar archive of a layout, plain or gzip/zstd-compressed (told apart by
/// their magic bytes). Blobs stream straight into the store as their entries come,
/// since `index.json` may come last; then the image is resolved from what arrived.
/// Blobs staged before an error stay in the store: they are verified content.
pub fn import_archive(reader: impl Read, store: &BlobStore, limits: &ImportLimits) -> Result<ImportedImage> {
    let (magic, reader) = sniff(reader)?;
    let staged = if magic.starts_with(&[0x1f, 0x8b]) {
        stage_archive(flate2::read::MultiGzDecoder::new(reader), store, limits)?
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        stage_archive(crate::decompress::ZstdReader::new(reader), store, limits)?
    } else {
        stage_archive(reader, store, limits)?
    };
    let Some(layout) = staged.oci_layout else {
        let hint = if staged.saw_docker_manifest {
            "; it looks like a docker-archive, which is not supported: convert it with \
             `skopeo copy docker-archive:IN oci-archive:OUT`"
        } else {
            "; is it an OCI image layout archive (`skopeo copy ... oci-archive:FILE`, `docker save`)?"
        };
        return Err(invalid("the image archive", format!("has no {OCI_LAYOUT_FILE} file{hint}")));
    };
    check_oci_layout(&layout)?;
    let Some(index) = staged.index else {
        return Err(invalid("the image archive", format!("has no {INDEX_FILE} file")));
    };
    resolve(&index, &mut ArchiveSource, store, limits, &staged.new_blobs)
}

/// Reads up to four leading bytes and gives them back in front of the rest.
/// The stream with its sniffed head put back in front.
type Resniffed<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

fn sniff<R: Read>(mut reader: R) -> Result<([u8; 4], Resniffed<R>)> {
    let mut head = Vec::with_capacity(4);
    (&mut reader).take(4).read_to_end(&mut head).map_err(LayoutError::Archive)?;
    let mut magic = [0u8; 4];
    magic[..head.len()].copy_from_slice(&head);
    Ok((magic, io::Cursor::new(head).chain(reader)))
}

struct Staged {
    oci_layout: Option<Vec<u8>>,
    index: Option<Vec<u8>>,
    /// Blobs this archive added to the store.
    new_blobs: BTreeSet<Digest>,
    saw_docker_manifest: bool,
}

fn stage_archive(reader: impl Read, store: &BlobStore, limits: &ImportLimits) -> Result<Staged> {
    let archive_err = LayoutError::Archive;
    let mut staged =
        Staged { oci_layout: None, index: None, new_blobs: BTreeSet::new(), saw_docker_manifest: false };
    let mut archive =
        tar::Archive::new(crate::tarcap::ExtensionCap::new(reader, crate::tarcap::DEFAULT_EXTENSION_CAP));
    let mut n_entries = 0u64;
    let mut total_size = 0u64;
    for entry in archive.entries().map_err(archive_err)? {
        let entry = entry.map_err(archive_err)?;
        n_entries += 1;
        if n_entries > limits.max_archive_entries {
            return Err(LayoutError::TooLarge {
                what: "the image archive's entry count".into(),
                limit: limits.max_archive_entries,
            });
        }
        let raw_name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let bad = |reason: &str| LayoutError::Entry { name: name.clone(), reason: reason.to_string() };
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            continue;
        }
        let parts = path::components(&raw_name).map_err(&bad)?;
        let is_layout_file = matches!(parts.as_slice(), [b"oci-layout" | b"index.json"] | [b"blobs", _, _]);
        if matches!(parts.as_slice(), [b"manifest.json"]) {
            staged.saw_docker_manifest = true;
        }
        match entry_type {
            // Anything else (docker's manifest.json, its legacy layer links) is skipped
            // unread, whatever its type: nothing from it reaches the disk.
            _ if !is_layout_file => continue,
            t if t.is_file() || t.is_contiguous() => {}
            t if t.is_dir() => return Err(bad("must be a file, not a directory")),
            t if t.is_symlink() => {
                return Err(bad("is a symlink; an image layout archive may hold only files and directories"));
            }
            t if t.is_hard_link() => {
                return Err(bad(
                    "is a hard link; an image layout archive may hold only files and directories",
                ));
            }
            t => return Err(bad(&format!("has unsupported entry type {t:?}"))),
        }
        let size = entry.size();
        match parts.as_slice() {
            [f] if *f == OCI_LAYOUT_FILE.as_bytes() => {
                if staged.oci_layout.is_some() {
                    return Err(bad("appears twice in the archive"));
                }
                staged.oci_layout = Some(read_bounded(entry, OCI_LAYOUT_FILE, 64 << 10)?);
            }
            [f] if *f == INDEX_FILE.as_bytes() => {
                if staged.index.is_some() {
                    return Err(bad("appears twice in the archive"));
                }
                staged.index = Some(read_bounded(entry, INDEX_FILE, limits.max_json_size)?);
            }
            [b"blobs", b"sha256", hex] => {
                let digest = std::str::from_utf8(hex)
                    .ok()
                    .and_then(Digest::from_hex)
                    .ok_or_else(|| bad("blob file names must be 64 lowercase hex digits"))?;
                if size > limits.max_blob_size {
                    return Err(LayoutError::TooLarge {
                        what: format!("blob {digest}"),
                        limit: limits.max_blob_size,
                    });
                }
                total_size += size;
                if total_size > limits.max_total_size {
                    return Err(LayoutError::TooLarge {
                        what: "the image archive's blobs together".into(),
                        limit: limits.max_total_size,
                    });
                }
                let existed = store.contains(&digest);
                store.put(entry, &digest, size).map_err(blob_err(format!("archive entry {name:?}")))?;
                if !existed {
                    staged.new_blobs.insert(digest);
                }
            }
            [b"blobs", alg, _] => {
                let alg = String::from_utf8_lossy(alg);
                return Err(bad(&format!("{alg} blobs are not supported, only sha256")));
            }
            _ => {}
        }
    }
    Ok(staged)
}

/// Where the blobs named by descriptors come from.
trait BlobSource {
    /// Makes the blob available in the store, or fails saying why.
    fn fetch(
        &mut self,
        what: &str,
        desc: &Descriptor,
        store: &BlobStore,
        limits: &ImportLimits,
    ) -> Result<()>;
}

/// Blobs were staged while the archive streamed by; they are either there or missing.
struct ArchiveSource;

impl BlobSource for ArchiveSource {
    fn fetch(&mut self, what: &str, desc: &Descriptor, store: &BlobStore, _: &ImportLimits) -> Result<()> {
        if store.contains(&desc.digest) {
            Ok(())
        } else {
            Err(LayoutError::Missing { what: what.into(), digest: desc.digest })
        }
    }
}

struct DirSource {
    blobs: std::path::PathBuf,
}

impl BlobSource for DirSource {
    fn fetch(&mut self, what: &str, desc: &Descriptor, store: &BlobStore, _: &ImportLimits) -> Result<()> {
        if store.contains(&desc.digest) {
            return Ok(());
        }
        let path = self.blobs.join(desc.digest.hex());
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => LayoutError::Missing { what: what.into(), digest: desc.digest },
                _ if source.raw_os_error() == Some(libc::ELOOP) => {
                    invalid(what, format!("blob {} is a symlink; refusing to follow it", desc.digest))
                }
                _ => LayoutError::Io { what: path.display().to_string(), source },
            })?;
        let meta = file.metadata().map_err(|source| LayoutError::Io { what: what.into(), source })?;
        if !meta.is_file() {
            return Err(invalid(what, format!("blob {} is not a regular file", desc.digest)));
        }
        if meta.len() != desc.size {
            return Err(LayoutError::SizeMismatch {
                what: what.into(),
                digest: desc.digest,
                expected: desc.size,
                actual: meta.len(),
            });
        }
        store
            .put(io::BufReader::with_capacity(256 * 1024, file), &desc.digest, desc.size)
            .map_err(blob_err(what))?;
        Ok(())
    }
}

/// Walks the graph from `index.json` down to every layer, checking each blob's
/// presence and size as it goes.
struct Resolver<'a> {
    source: &'a mut dyn BlobSource,
    store: &'a BlobStore,
    limits: &'a ImportLimits,
    n_descriptors: usize,
    /// Bytes of the distinct blobs referenced so far.
    total_size: u64,
    referenced: BTreeSet<Digest>,
    platforms: BTreeMap<(String, String, String), PlatformImage>,
}

fn resolve(
    index_json: &[u8],
    source: &mut dyn BlobSource,
    store: &BlobStore,
    limits: &ImportLimits,
    new_blobs: &BTreeSet<Digest>,
) -> Result<ImportedImage> {
    let index: ImageIndex = parse_json(INDEX_FILE, index_json)?;
    let mut ref_names = BTreeSet::new();
    for desc in &index.manifests {
        if let Some(name) = desc.annotations.get(ANNOTATION_REF_NAME) {
            ref_names.insert(name.clone());
        }
    }
    if ref_names.len() > 1 {
        let names: Vec<_> = ref_names.into_iter().collect();
        return Err(invalid(
            INDEX_FILE,
            format!("holds several images ({}); export and import them one at a time", names.join(", ")),
        ));
    }
    let mut resolver = Resolver {
        source,
        store,
        limits,
        n_descriptors: 0,
        total_size: 0,
        referenced: BTreeSet::new(),
        platforms: BTreeMap::new(),
    };
    resolver.walk_index(INDEX_FILE, &index, 0)?;
    if resolver.platforms.is_empty() {
        return Err(invalid(INDEX_FILE, "references no container image manifest"));
    }
    let index_digest = store.put_bytes(index_json).map_err(blob_err(INDEX_FILE))?;
    resolver.referenced.insert(index_digest);
    let unreferenced_blobs = new_blobs.difference(&resolver.referenced).copied().collect();
    Ok(ImportedImage {
        index_digest,
        ref_name: ref_names.into_iter().next(),
        platforms: resolver.platforms.into_values().collect(),
        blobs: resolver.referenced.into_iter().collect(),
        unreferenced_blobs,
    })
}

impl Resolver<'_> {
    fn fetch(&mut self, what: &str, desc: &Descriptor) -> Result<()> {
        if desc.size > self.limits.max_blob_size {
            return Err(LayoutError::TooLarge {
                what: format!("{what}: blob {}", desc.digest),
                limit: self.limits.max_blob_size,
            });
        }
        if !self.referenced.contains(&desc.digest) {
            self.total_size += desc.size;
            if self.total_size > self.limits.max_total_size {
                return Err(LayoutError::TooLarge {
                    what: "the image's blobs together".into(),
                    limit: self.limits.max_total_size,
                });
            }
        }
        self.source.fetch(what, desc, self.store, self.limits)?;
        let actual = self.store.size(&desc.digest).map_err(blob_err(what))?;
        if actual != desc.size {
            return Err(LayoutError::SizeMismatch {
                what: what.into(),
                digest: desc.digest,
                expected: desc.size,
                actual,
            });
        }
        self.referenced.insert(desc.digest);
        Ok(())
    }

    fn fetch_json<T: DeserializeOwned>(&mut self, what: &str, desc: &Descriptor) -> Result<T> {
        if desc.size > self.limits.max_json_size {
            return Err(LayoutError::TooLarge {
                what: format!("{what}: blob {}", desc.digest),
                limit: self.limits.max_json_size,
            });
        }
        self.fetch(what, desc)?;
        let bytes =
            self.store.read_to_vec(&desc.digest, self.limits.max_json_size).map_err(blob_err(what))?;
        parse_json(&format!("{} {}", kind_name(desc.kind()), desc.digest), &bytes)
    }

    fn walk_index(&mut self, what: &str, index: &ImageIndex, depth: usize) -> Result<()> {
        if index.schema_version != 2 {
            return Err(invalid(what, format!("schemaVersion is {}, expected 2", index.schema_version)));
        }
        if index.manifests.is_empty() {
            return Err(invalid(what, "lists no manifests"));
        }
        for (idx, desc) in index.manifests.iter().enumerate() {
            let what = format!("{what}: manifests[{idx}]");
            self.n_descriptors += 1;
            if self.n_descriptors > self.limits.max_manifests {
                return Err(invalid(
                    what,
                    format!("more than {} manifests in the image", self.limits.max_manifests),
                ));
            }
            if is_attachment(desc) {
                continue;
            }
            match desc.kind() {
                MediaKind::Index => {
                    if depth + 1 > self.limits.max_index_depth {
                        return Err(invalid(what, "indexes are nested too deeply"));
                    }
                    if self.referenced.contains(&desc.digest) {
                        continue;
                    }
                    let nested: ImageIndex = self.fetch_json(&what, desc)?;
                    self.walk_index(&format!("index {}", desc.digest), &nested, depth + 1)?;
                }
                MediaKind::Manifest => {
                    if self.referenced.contains(&desc.digest) {
                        continue;
                    }
                    self.walk_manifest(&what, desc)?;
                }
                MediaKind::Config | MediaKind::Layer(_) => {
                    return Err(invalid(
                        what,
                        format!("media type {} is not a manifest or an index", desc.media_type),
                    ));
                }
                // Artifacts (signatures, SBOMs, charts) may share an index with images.
                MediaKind::Other => {}
            }
        }
        Ok(())
    }

    fn walk_manifest(&mut self, what: &str, desc: &Descriptor) -> Result<()> {
        let manifest: ImageManifest = self.fetch_json(what, desc)?;
        let mwhat = format!("manifest {}", desc.digest);
        if manifest.schema_version != 2 {
            return Err(invalid(mwhat, format!("schemaVersion is {}, expected 2", manifest.schema_version)));
        }
        if manifest.config.kind() != MediaKind::Config {
            // An artifact dressed as an image manifest (e.g. a Helm chart): not ours to run.
            return Ok(());
        }
        if manifest.layers.len() > self.limits.max_layers {
            return Err(invalid(
                format!("{mwhat}: layers"),
                format!(
                    "{} layers, more than the limit of {}",
                    manifest.layers.len(),
                    self.limits.max_layers
                ),
            ));
        }
        let config: ImageConfig = self.fetch_json(&format!("{mwhat}: config"), &manifest.config)?;
        let cwhat = format!("config {}", manifest.config.digest);
        let mut total_size = desc.size + manifest.config.size;
        for (idx, layer) in manifest.layers.iter().enumerate() {
            let lwhat = format!("{mwhat}: layers[{idx}]");
            match layer.kind() {
                MediaKind::Layer(_) => {}
                _ if layer.media_type == oci::MEDIA_TYPE_DOCKER_FOREIGN_LAYER || !layer.urls.is_empty() => {
                    return Err(invalid(lwhat, "foreign layers (fetched from URLs) are not supported"));
                }
                _ => {
                    return Err(invalid(
                        lwhat,
                        format!("unsupported layer media type {:?}", layer.media_type),
                    ));
                }
            }
            self.fetch(&lwhat, layer)?;
            total_size += layer.size;
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(invalid(
                format!("{cwhat}: rootfs.diff_ids"),
                format!(
                    "lists {} layers but the manifest has {}",
                    config.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            ));
        }
        let from_desc = desc.platform.clone().unwrap_or_default();
        let pick = |a: &str, b: &str| if a.is_empty() { b.to_string() } else { a.to_string() };
        let os = pick(&config.os, &from_desc.os);
        let architecture = pick(&config.architecture, &from_desc.architecture);
        let variant =
            pick(config.variant.as_deref().unwrap_or(""), from_desc.variant.as_deref().unwrap_or(""));
        if os.is_empty() || architecture.is_empty() {
            return Err(invalid(cwhat, "names no os or architecture"));
        }
        let key = (os.clone(), architecture.clone(), variant.clone());
        if self.platforms.contains_key(&key) {
            let v = if variant.is_empty() { String::new() } else { format!("/{variant}") };
            return Err(invalid(what, format!("a second manifest for {os}/{architecture}{v}")));
        }
        self.platforms.insert(
            key,
            PlatformImage {
                os,
                architecture,
                variant,
                manifest_digest: desc.digest,
                config_digest: manifest.config.digest,
                layers: manifest.layers.clone(),
                diff_ids: config.rootfs.diff_ids.clone(),
                total_size,
                run_config: config.run_config(),
            },
        );
        Ok(())
    }
}

fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Index => "index",
        MediaKind::Manifest => "manifest",
        MediaKind::Config => "config",
        MediaKind::Layer(_) => "layer",
        MediaKind::Other => "blob",
    }
}

/// Build attestations and similar attachments that tools put next to the platform
/// manifests (buildx marks them `unknown/unknown`).
fn is_attachment(desc: &Descriptor) -> bool {
    desc.annotations.contains_key("vnd.docker.reference.type")
        || desc.platform.as_ref().is_some_and(|p| p.os == "unknown" || p.architecture == "unknown")
}
