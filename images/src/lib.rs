//! OCI image handling shared by the hub and the agent: digests, a content-addressed blob
//! store, importing image layouts, unpacking layers safely, and writing images.
//!
//! Synchronous on purpose (no tokio): callers run it on a blocking thread.

pub mod blobstore;
pub mod build;
pub mod decompress;
pub mod digest;
pub mod layout;
pub mod oci;
mod path;
pub mod tarcap;
pub mod testing;
pub mod unpack;

pub use blobstore::{BlobError, BlobStore};
pub use digest::{Digest, DigestError};
pub use layout::{
    ImportLimits, ImportedImage, LayoutError, PlatformImage, import_archive, import_dir, import_path,
};
pub use unpack::{UnpackError, UnpackOptions, UnpackReport, remove_rootfs, unpack_layers};
