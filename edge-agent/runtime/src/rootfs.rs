//! Per-container writable root filesystems: an overlayfs mount whose lower layer is the
//! image's unpacked, read-only rootfs, with the container's own upper and work
//! directories, so containers never write to a shared image.
//!
//! Layout under the agent's state directory: `<state_dir>/<id>/{upper,work,merged}`;
//! `merged` is what the container's bundle uses as its root. `<state_dir>` is 0701 and
//! `<id>` 0700, or 0710 with the app's root group for a user-namespace container, whose
//! init must reach `merged` as that unprivileged id.
//!
//! A container in a user namespace ([`crate::userns`]) gets its image through an
//! idmapped mount (`<state_dir>/<id>/lower`, the image's root with its ids shifted into
//! the app's range, Linux 5.19+ for overlayfs on top of it), and an upper directory
//! owned by the app's root: the image's files are root's inside, copy-up keeps their
//! owners, and nothing is copied or chowned in the shared image. The idmapped mount
//! is made with the pod's user namespace.
//!
//! The calls are synchronous (mount(2) does not fork, so calling them from the agent's
//! process is fine); async callers use `spawn_blocking`.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    InvalidId(#[from] crate::RuntimeError),
    #[error("image rootfs {path}: {reason}")]
    InvalidLower { path: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is already mounted over a different image ({options}); release the container first")]
    MountedElsewhere { path: PathBuf, options: String },
    #[error("{path} is still mounted after unmounting it")]
    StillMounted { path: PathBuf },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io { what, path, source }
}

/// Creates and removes containers' overlay roots under one state directory.
#[derive(Debug, Clone)]
pub struct OverlayRootfs {
    state_dir: PathBuf,
}

impl OverlayRootfs {
    /// `state_dir` should be on a filesystem that overlayfs accepts as an upper layer
    /// (ext4, xfs, btrfs, tmpfs; not overlayfs itself).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        OverlayRootfs { state_dir: state_dir.into() }
    }

    /// Where every container's directory lives.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join(id)
    }

    /// Path of the mounted root of container `id`.
    pub fn merged_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("merged")
    }

    /// Mounts container `id`'s root over `image_rootfs` and returns its path. Already
    /// mounted over the same image (an agent restart) is fine and returns the same path.
    pub fn prepare(&self, id: &str, image_rootfs: &Path) -> Result<PathBuf, RootfsError> {
        self.prepare_in(id, image_rootfs, None)
    }

    /// [`Self::prepare`] for a container in the user namespace at `userns` whose
    /// root is `root_host_id` on the device (see the module docs).
    pub fn prepare_mapped(
        &self,
        id: &str,
        image_rootfs: &Path,
        userns: &Path,
        root_host_id: u32,
    ) -> Result<PathBuf, RootfsError> {
        self.prepare_in(id, image_rootfs, Some((userns, root_host_id)))
    }

    fn prepare_in(
        &self,
        id: &str,
        image_rootfs: &Path,
        mapped: Option<(&Path, u32)>,
    ) -> Result<PathBuf, RootfsError> {
        crate::validate_container_id(id)?;
        let mut lower = image_rootfs.canonicalize().map_err(io_err("resolving", image_rootfs))?;
        if !lower.is_dir() {
            return Err(RootfsError::InvalidLower { path: lower, reason: "not a directory".into() });
        }
        let dir = self.container_dir(id);
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for (path, mode) in [(&upper, 0o755), (&work, 0o700), (&merged, 0o755)] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(path)
                .map_err(io_err("creating", path))?;
        }
        // The container's init opens its root after it became the app's root: it passes
        // through here, and into its own directory only (see `crate::userns`).
        crate::userns::set_mode(&self.state_dir, crate::userns::PASS_THROUGH_MODE)
            .map_err(io_err("opening for passage", &self.state_dir))?;
        crate::userns::restrict_dir(&dir, mapped.map(|(_, root)| root))
            .map_err(io_err("restricting", &dir))?;
        if let Some((userns, root)) = mapped {
            let idmapped = dir.join("lower");
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&idmapped)
                .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
                .map_err(io_err("creating", &idmapped))?;
            if mount_options(&idmapped)?.is_none() {
                idmapped_bind(&lower, &idmapped, userns)
                    .map_err(io_err("idmapping the image onto", &idmapped))?;
            }
            nix::unistd::chown(
                &upper,
                Some(nix::unistd::Uid::from_raw(root)),
                Some(nix::unistd::Gid::from_raw(root)),
            )
            .map_err(|e| io_err("handing to the app's root", &upper)(e.into()))?;
            lower = idmapped;
        }
        let mut paths = Vec::new();
        for p in [&lower, &upper, &work] {
            paths.push(option_path(p)?);
        }
        let options = format!("lowerdir={},upperdir={},workdir={}", paths[0], paths[1], paths[2]);

        if let Some(current) = mount_options(&merged)? {
            let same_lower = current.split(',').any(|o| o == format!("lowerdir={}", paths[0]));
            return if same_lower {
                Ok(merged)
            } else {
                Err(RootfsError::MountedElsewhere { path: merged, options: current })
            };
        }
        mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
            .map_err(|e| io_err("mounting overlay on", &merged)(e.into()))?;
        Ok(merged)
    }

    /// Unmounts container `id`'s root (lazily if something still uses it) and removes
    /// its directories, the container's writes included. Call it only once the
    /// container is deleted: a running container keeps its own copy of the mount, and
    /// its upper directory would vanish under it. Releasing what is not there is fine.
    pub fn release(&self, id: &str) -> Result<(), RootfsError> {
        crate::validate_container_id(id)?;
        let dir = self.container_dir(id);
        if !dir.exists() {
            return Ok(());
        }
        // The overlay first, then the idmapped image under it.
        for mount_point in [dir.join("merged"), dir.join("lower")] {
            // Bounded: a mount point may carry a few stacked mounts, never many.
            for _ in 0..8 {
                if mount_options(&mount_point)?.is_none() {
                    break;
                }
                match umount2(&mount_point, MntFlags::empty()) {
                    Ok(()) => {}
                    Err(nix::errno::Errno::EBUSY) => umount2(&mount_point, MntFlags::MNT_DETACH)
                        .map_err(|e| io_err("unmounting", &mount_point)(e.into()))?,
                    Err(e) => return Err(io_err("unmounting", &mount_point)(e.into())),
                }
            }
            // Never recurse into a live mount: that would delete through it (and through
            // `lower`, into the shared image).
            if mount_options(&mount_point)?.is_some() {
                return Err(RootfsError::StillMounted { path: mount_point });
            }
        }
        fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))
    }
}

/// Mounts a copy of `source` at `target` with its ids shifted by the maps of the user
/// namespace at `userns` (`open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)` +
/// `move_mount`), read-only: it is only ever an overlay's lower layer.
fn idmapped_bind(source: &Path, target: &Path, userns: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let (source_c, target_c, empty) = (c(source)?, c(target)?, CString::default());
    let ns = fs::File::open(userns)?;
    // SAFETY: a valid, NUL-terminated path; the returned fd is checked and owned below.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a fresh fd.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP | libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.as_raw_fd() as u64,
    };
    // SAFETY: valid fds, an empty path with AT_EMPTY_PATH, and `attr` with its true size.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if set < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("idmapped mounts (Linux 5.12+, and the image's filesystem must allow them): {e}"),
        ));
    }
    // SAFETY: valid fds and NUL-terminated paths.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// overlayfs splits its options on ',' and ':' (lowerdir lists): refuse paths with them.
fn option_path(path: &Path) -> Result<String, RootfsError> {
    let s = path.to_str().ok_or_else(|| RootfsError::InvalidLower {
        path: path.to_path_buf(),
        reason: "path is not UTF-8".into(),
    })?;
    if s.contains([',', ':', '\\', '\n']) {
        return Err(RootfsError::InvalidLower {
            path: path.to_path_buf(),
            reason: "overlayfs paths may not contain ',', ':', '\\' or newlines".into(),
        });
    }
    Ok(s.to_string())
}

/// Super options of the topmost mount at `path` (exact match), if it is a mount point.
fn mount_options(path: &Path) -> Result<Option<String>, RootfsError> {
    let mountinfo = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(mountinfo).map_err(io_err("reading", mountinfo))?;
    Ok(find_mount(&text, path))
}

fn find_mount(mountinfo: &str, path: &Path) -> Option<String> {
    let target = path.to_str()?;
    let mut found = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
        if fields.get(4).map(|m| unescape(m)) == Some(target.to_string()) {
            // Later lines are mounted on top of earlier ones.
            found = Some(fields.get(dash + 3).map_or(String::new(), |o| unescape(o)));
        }
    }
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
90 27 0:50 / /var/lib/fl/c1/merged rw,relatime - overlay overlay rw,lowerdir=/img/a,upperdir=/var/lib/fl/c1/upper,workdir=/var/lib/fl/c1/work
91 27 0:51 / /var/lib/fl/with\\040space/merged rw shared:5 - overlay overlay rw,lowerdir=/img/b
92 90 0:52 / /var/lib/fl/c1/merged rw - overlay overlay rw,lowerdir=/img/top
";

    #[test]
    fn finds_topmost_mount_and_unescapes() {
        assert_eq!(
            find_mount(MOUNTINFO, Path::new("/var/lib/fl/c1/merged")).as_deref(),
            Some("rw,lowerdir=/img/top")
        );
        assert_eq!(
            find_mount(MOUNTINFO, Path::new("/var/lib/fl/with space/merged")).as_deref(),
            Some("rw,lowerdir=/img/b")
        );
        assert_eq!(find_mount(MOUNTINFO, Path::new("/var/lib/fl/c1")), None, "parents do not match");
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\"), "trailing\\");
    }

    #[test]
    fn refuses_paths_overlayfs_would_misparse() {
        assert!(option_path(Path::new("/a,b")).is_err());
        assert!(option_path(Path::new("/a:b")).is_err());
        assert_eq!(option_path(Path::new("/a/b")).unwrap(), "/a/b");
    }
}
