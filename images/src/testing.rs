//! Tiny busybox images, built in milliseconds without cargo or Docker, so that tests
//! here and in other crates (hub import, agent runtime) can make real images.

use crate::build::{self, BuildError, LayerBuilder, WrittenImage};
use crate::oci::{ContainerConfig, ImageConfig};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where Debian's `busybox-static` package puts the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into `/bin`: enough for shells, probes and scripts in tests and demos.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "[",
    "ash",
    "awk",
    "basename",
    "cat",
    "chmod",
    "chown",
    "cp",
    "cut",
    "date",
    "df",
    "dirname",
    "du",
    "echo",
    "env",
    "expr",
    "false",
    "find",
    "free",
    "grep",
    "head",
    "hostname",
    "id",
    "ip",
    "kill",
    "less",
    "ln",
    "ls",
    "mkdir",
    "mount",
    "mv",
    "nc",
    "nslookup",
    "ping",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "sync",
    "tail",
    "tee",
    "test",
    "timeout",
    "top",
    "touch",
    "tr",
    "true",
    "umount",
    "uname",
    "uniq",
    "uptime",
    "vi",
    "wc",
    "wget",
    "which",
    "xargs",
    "yes",
];

#[derive(Debug, thiserror::Error)]
pub enum TestImageError {
    #[error("{0} is missing: install it with `apt-get install -y busybox-static`")]
    NoBusybox(PathBuf),
    #[error(
        "{0} is not a statically linked ELF binary and would not run in an empty image; install busybox-static"
    )]
    NotStatic(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Adds the base every Flotilla test and demo image shares: a static busybox with its
/// applets in `/bin`, `/etc/passwd` and `/etc/group` for root and nobody, and the
/// empty directories runtimes mount over.
pub fn add_busybox_base(layer: &mut LayerBuilder, busybox: &Path) -> Result<(), TestImageError> {
    match is_static_elf(busybox) {
        Ok(true) => {}
        Ok(false) => return Err(TestImageError::NotStatic(busybox.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TestImageError::NoBusybox(busybox.to_path_buf()));
        }
        Err(source) => return Err(TestImageError::Io { path: busybox.to_path_buf(), source }),
    }
    layer.file_from_disk("bin/busybox", busybox, 0o755);
    for applet in BUSYBOX_APPLETS {
        layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    for dir in ["proc", "sys", "dev", "etc", "run", "var", "usr/bin", "root"] {
        layer.dir(dir, if dir == "root" { 0o700 } else { 0o755 });
    }
    layer.dir("tmp", 0o1777);
    layer.file(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    layer.file("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644);
    Ok(())
}

/// A config for the host's platform with `PATH` set.
pub fn image_config(entrypoint: &[&str], cmd: &[&str], env: &[&str], created: u64) -> ImageConfig {
    let mut full_env = vec!["PATH=/usr/bin:/bin".to_string()];
    full_env.extend(env.iter().map(|e| e.to_string()));
    ImageConfig {
        created: Some(build::rfc3339_utc(created)),
        architecture: crate::oci::host_architecture().to_string(),
        os: "linux".to_string(),
        config: Some(ContainerConfig {
            env: Some(full_env),
            entrypoint: Some(entrypoint.iter().map(|s| s.to_string()).collect()),
            cmd: (!cmd.is_empty()).then(|| cmd.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes a one-layer busybox image running `entrypoint` as an OCI layout archive at
/// `out_path`, named `ref_name`. The same arguments give the same bytes.
pub fn busybox_image(
    out_path: &Path,
    ref_name: &str,
    entrypoint: &[&str],
) -> Result<WrittenImage, TestImageError> {
    let mut layer = LayerBuilder::new();
    add_busybox_base(&mut layer, Path::new(BUSYBOX))?;
    let layer = layer.build()?;
    let config = image_config(entrypoint, &[], &[], 0);
    Ok(build::write_image_archive(out_path, ref_name, config, &[layer], 0)?)
}

/// Whether `path` is a 64-bit little-endian ELF with no program interpreter, i.e. one
/// that runs in an image with no libc. (`static-pie` binaries qualify.)
pub fn is_static_elf(path: &Path) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let mut ident = [0u8; 64];
    file.read_exact(&mut ident)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a 64-bit little-endian ELF file");
    if &ident[..4] != b"\x7fELF" || ident[4] != 2 || ident[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([ident[o], ident[o + 1]]);
    let phoff = u64::from_le_bytes(ident[32..40].try_into().expect("8 bytes"));
    let phentsize = u64::from(u16_at(54));
    let phnum = u64::from(u16_at(56));
    if phentsize < 4 || phnum > 4096 {
        return Err(bad());
    }
    const PT_INTERP: u32 = 3;
    for idx in 0..phnum {
        file.seek(SeekFrom::Start(phoff + idx * phentsize))?;
        let mut p_type = [0u8; 4];
        file.read_exact(&mut p_type)?;
        if u32::from_le_bytes(p_type) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}
