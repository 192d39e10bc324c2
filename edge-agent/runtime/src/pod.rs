//! An app's pod: the namespaces its containers share, held open by bind mounts
//! (`<pods>/<app>/net`, `<pods>/<app>/ipc`, as `ip netns` holds network namespaces)
//! rather than by any one container, so a container can crash, restart or be updated
//! without taking its sidecars' network with it. Containers join them by path in
//! their OCI spec ([`crate::bundle`]).
//!
//! An app with `userNamespace` also gets a user namespace in its pod, and its network
//! and IPC namespaces are made inside it, so that they belong to it: root in the
//! containers may then mount `/sys`, `/dev/mqueue` and `/proc` for them, bind low ports
//! and configure its own loopback, none of which a user namespace may do in namespaces
//! of the device's. A process must make a user namespace (a thread of a multi-threaded
//! one may not), so a short-lived holder (the agent binary again,
//! [`crate::userns::pod_holder_main`]) is started inside the new namespaces while the
//! agent writes its id maps and binds the three namespaces to files.
//!
//! The pods directory lives in the agent's runtime directory (tmpfs): a reboot takes
//! the namespaces away, and the agent makes them again before it starts the app.
//! The directory is made a shared mount of its own, so that when a pod is removed
//! the unmount reaches the copies that containers' mount namespaces (slaves of the
//! host's) took of it, and the namespace really goes.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// `statfs` type of a namespace file.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Where one app's pod lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPaths {
    pub dir: PathBuf,
}

impl PodPaths {
    pub fn new(pods_root: &Path, app: &str) -> PodPaths {
        PodPaths { dir: pods_root.join(app) }
    }

    pub fn net(&self) -> PathBuf {
        self.dir.join("net")
    }

    pub fn ipc(&self) -> PathBuf {
        self.dir.join("ipc")
    }

    pub fn user(&self) -> PathBuf {
        self.dir.join("user")
    }

    /// Both namespaces it needs are held (`net` only when the app has its own).
    pub fn exists(&self, private_net: bool) -> bool {
        is_nsfs(&self.ipc()) && (!private_net || is_nsfs(&self.net()))
    }

    /// The pod holds a user namespace of its own.
    pub fn has_user(&self) -> bool {
        is_nsfs(&self.user())
    }
}

/// What a pod with a user namespace needs: the app's ids, and the program to hold the
/// namespaces while they are bound (run as `<holder> pod-holder`).
#[derive(Debug, Clone, Copy)]
pub struct UserPod<'a> {
    pub range: crate::userns::IdRange,
    pub holder: &'a Path,
}

// The field is a C long: 32 bits on armv7, where the cast is needed.
#[allow(clippy::unnecessary_cast)]
fn is_nsfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as i64 == NSFS_MAGIC)
}

/// Apps with a pod under `pods_root` (an IPC namespace held).
pub fn list_pods(pods_root: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(pods_root) else { return vec![] };
    let mut apps: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| is_nsfs(&e.path().join("ipc")))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    apps.sort();
    apps
}

/// Makes `pods_root` a shared mount of its own (once), so that unmounting a pod's
/// namespace file also unmounts the copies containers hold.
fn ensure_shared_root(pods_root: &Path) -> io::Result<()> {
    fs::create_dir_all(pods_root)?;
    crate::userns::set_mode(pods_root, crate::userns::PASS_THROUGH_MODE)?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let root = fs::canonicalize(pods_root)?;
    let is_mount = mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(root.to_str().unwrap_or("")));
    if !is_mount {
        mount(Some(&root), &root, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(io::Error::from)?;
    }
    // Private first: a bind of a directory inside a shared mount joins its peer group.
    mount(None::<&str>, &root, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>).map_err(io::Error::from)?;
    mount(None::<&str>, &root, None::<&str>, MsFlags::MS_SHARED, None::<&str>).map_err(io::Error::from)?;
    Ok(())
}

/// Undoes [`ensure_shared_root`] once no pod is left: `flotilla-agent reset` leaves no mount
/// behind, so the runtime directory can be removed.
pub fn release_root(pods_root: &Path) -> io::Result<()> {
    if !list_pods(pods_root).is_empty() {
        return Err(io::Error::other("pods remain: remove them first"));
    }
    let Ok(root) = fs::canonicalize(pods_root) else { return Ok(()) };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let n_mounts =
        mountinfo.lines().filter(|l| l.split(' ').nth(4) == Some(root.to_str().unwrap_or(""))).count();
    for _ in 0..n_mounts {
        umount2(&root, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    Ok(())
}

/// Creates the pod's namespaces: always IPC, and a network namespace with `lo` up
/// when `private_net`; with `user`, a user namespace owning both (which needs
/// `private_net`). Idempotent: what exists is kept, but a pod of the other kind (with
/// or without a user namespace) is an error: remove it first.
pub fn create_pod(
    pods_root: &Path,
    app: &str,
    private_net: bool,
    user: Option<UserPod<'_>>,
) -> io::Result<PodPaths> {
    let paths = PodPaths::new(pods_root, app);
    if paths.exists(private_net) {
        if paths.has_user() != user.is_some() {
            return Err(io::Error::other(format!(
                "the pod of app {app} exists {} a user namespace: remove it first",
                if paths.has_user() { "with" } else { "without" }
            )));
        }
        crate::userns::restrict_dir(&paths.dir, user.map(|u| u.range.host_first))?;
        return Ok(paths);
    }
    if let Some(user) = user {
        if !private_net {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a pod with a user namespace needs a network namespace of its own",
            ));
        }
        ensure_shared_root(pods_root)?;
        fs::create_dir_all(&paths.dir)?;
        // Containers join the namespaces and bind the hosts file as the app's root.
        crate::userns::restrict_dir(&paths.dir, Some(user.range.host_first))?;
        let made = create_user_pod(&paths, user);
        if made.is_err() {
            let _ = remove_pod(pods_root, app);
        }
        return made.map(|()| paths);
    }
    ensure_shared_root(pods_root)?;
    fs::create_dir_all(&paths.dir)?;
    crate::userns::restrict_dir(&paths.dir, None)?;
    let mut wanted = vec![(CloneFlags::CLONE_NEWIPC, "ipc", paths.ipc())];
    if private_net {
        wanted.push((CloneFlags::CLONE_NEWNET, "net", paths.net()));
    }
    wanted.retain(|(_, _, p)| !is_nsfs(p));
    // unshare() changes the calling thread only (for these two kinds): a thread of its
    // own makes the namespaces, binds them to their files and ends.
    std::thread::spawn(move || -> io::Result<()> {
        let flags = wanted.iter().fold(CloneFlags::empty(), |f, (k, _, _)| f | *k);
        unshare(flags).map_err(io::Error::from)?;
        for (kind, name, target) in &wanted {
            File::create(target)?;
            let source = format!("/proc/thread-self/ns/{name}");
            mount(Some(source.as_str()), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(
                |e| io::Error::other(format!("binding {name} namespace to {}: {e}", target.display())),
            )?;
            if *kind == CloneFlags::CLONE_NEWNET {
                loopback_up()?;
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| io::Error::other("the pod thread panicked"))??;
    Ok(paths)
}

/// Starts a holder in new user, network and IPC namespaces (one `unshare`: the user
/// namespace is made first and owns the others), maps the app's ids, binds the three
/// namespaces under the pod directory, brings `lo` up, and lets the holder go.
fn create_user_pod(paths: &PodPaths, user: UserPod<'_>) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(user.holder);
    command
        .arg(crate::userns::POD_HOLDER_SUBCOMMAND)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // system call (async-signal-safe).
    unsafe {
        command.pre_exec(|| {
            unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC)
                .map_err(io::Error::from)
        });
    }
    let mut holder = command
        .spawn()
        .map_err(|e| io::Error::other(format!("starting the pod holder {}: {e}", user.holder.display())))?;
    let pid = holder.id();
    let bound = (|| -> io::Result<()> {
        // A process of the parent namespace with CAP_SETUID/CAP_SETGID may write any
        // map, without denying setgroups first.
        fs::write(format!("/proc/{pid}/uid_map"), user.range.map_line())?;
        fs::write(format!("/proc/{pid}/gid_map"), user.range.map_line())?;
        for (name, target) in [("user", paths.user()), ("net", paths.net()), ("ipc", paths.ipc())] {
            File::create(&target)?;
            let source = format!("/proc/{pid}/ns/{name}");
            mount(Some(source.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(
                |e| io::Error::other(format!("binding {name} namespace to {}: {e}", target.display())),
            )?;
        }
        in_netns(&paths.net(), loopback_up)
    })();
    drop(holder.stdin.take());
    let _ = holder.wait();
    bound
}

/// Runs `f` on a thread of its own that joined the network namespace at `net` (the
/// thread ends right after, so nothing else ever runs there).
fn in_netns<T: Send + 'static>(
    net: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = File::open(net)?;
    std::thread::spawn(move || -> io::Result<T> {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the network namespace thread panicked"))?
}

/// Releases the pod's namespaces (they end once no process is left in them) and its
/// directory.
pub fn remove_pod(pods_root: &Path, app: &str) -> io::Result<()> {
    let paths = PodPaths::new(pods_root, app);
    for p in [paths.net(), paths.ipc(), paths.user()] {
        if is_nsfs(&p) {
            umount2(&p, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
        }
    }
    match fs::remove_dir_all(&paths.dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Brings `lo` up in the calling thread's network namespace.
pub(crate) fn loopback_up() -> io::Result<()> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which outlives the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A non-blocking TCP socket created inside the network namespace at `net` (a socket
/// stays in the namespace it was made in), for probing a pod's ports from the agent.
pub fn tcp_socket_in(net: &Path, ipv6: bool) -> io::Result<OwnedFd> {
    in_netns(net, move || {
        let family =
            if ipv6 { nix::sys::socket::AddressFamily::Inet6 } else { nix::sys::socket::AddressFamily::Inet };
        nix::sys::socket::socket(
            family,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(io::Error::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_holds_its_namespaces_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("pods");
        let p = create_pod(&pods, "web", true, None).unwrap();
        assert!(p.exists(true));
        assert_eq!(list_pods(&pods), vec!["web".to_string()]);
        let ours = fs::metadata("/proc/self/ns/net").unwrap();
        let theirs = fs::metadata(p.net()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(ours.ino(), theirs.ino(), "a network namespace of its own");
        // Idempotent.
        let again = create_pod(&pods, "web", true, None).unwrap();
        assert_eq!(fs::metadata(again.net()).unwrap().ino(), theirs.ino());
        // A socket made in it belongs to it: bound to a port there, the same port is
        // still free on the host.
        let fd = tcp_socket_in(&p.net(), false).unwrap();
        let addr = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, 0);
        nix::sys::socket::bind(fd.as_raw_fd(), &addr).unwrap();
        let bound: nix::sys::socket::SockaddrIn = nix::sys::socket::getsockname(fd.as_raw_fd()).unwrap();
        std::net::TcpListener::bind(("127.0.0.1", bound.port())).expect("the port is free outside the pod");
        // Host-network apps get IPC only.
        let host = create_pod(&pods, "host-app", false, None).unwrap();
        assert!(host.exists(false) && !host.exists(true));
        remove_pod(&pods, "web").unwrap();
        remove_pod(&pods, "host-app").unwrap();
        assert!(list_pods(&pods).is_empty());
        assert!(!p.dir.exists());
        // Nothing stays mounted: the directory can go.
        release_root(&pods).unwrap();
        let root = fs::canonicalize(&pods).unwrap();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.lines().any(|l| l.split(' ').nth(4) == root.to_str()), "pods root still mounted");
        fs::remove_dir(&pods).unwrap();
    }

    #[test]
    fn the_root_stays_while_a_pod_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("pods");
        create_pod(&pods, "web", false, None).unwrap();
        assert!(release_root(&pods).is_err());
        remove_pod(&pods, "web").unwrap();
        release_root(&pods).unwrap();
    }
}
