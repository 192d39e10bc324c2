//! OCI bundle for one container: `config.json` built from the desired container, the
//! app's network mode and the image's run config, following Docker's and Kubernetes'
//! rules for the command, environment and user, and runc's defaults for mounts, masked
//! paths and devices.
//!
//! [`build_spec`] is pure (tested without I/O); [`write_bundle`] adds the only reads it
//! needs (the image's `/etc/passwd` and `/etc/group`, resolved inside the rootfs so a
//! hostile image cannot point them at the host, and whether the host has
//! `/etc/resolv.conf` and `/etc/hosts`) and writes the file atomically.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, LinuxSeccomp, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use shared_proto::NetworkMode;
use shared_proto::agent_state::ImageRunConfig;
use shared_proto::manifest::DesiredContainer;

use crate::capabilities::{self, CapabilityMask};
use crate::seccomp::{self, KernelVersion, SeccompArch};

/// Used when neither the image nor the container sets `PATH` (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period; a quota of `millis * 100` µs per period is `millis` thousandths of a CPU.
pub const CPU_PERIOD_US: u64 = 100_000;

/// runc's default spec: kernel interfaces a container has no business reading.
const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];
const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A pids limit for containers that set none: a fork bomb in one container must not
/// take the device's process table (Docker sets none; Kubernetes leaves it to the node).
pub const DEFAULT_PIDS_LIMIT: u64 = 1024;

/// The namespaces of the container's pod, joined by path (see [`crate::pod`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct PodNamespaces<'a> {
    /// `None`: the host's network (or a namespace of its own without a pod).
    pub net: Option<&'a Path>,
    pub ipc: Option<&'a Path>,
    /// The pod's user namespace (an app with `userNamespace`), which owns its network
    /// and IPC namespaces; `None`: the device's.
    pub user: Option<&'a Path>,
}

/// A volume as the container sees it, resolved to the device by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// Bind-mount this directory of the device.
    Bind(PathBuf),
    /// A memory-backed filesystem of at most this many bytes.
    Tmpfs { size_bytes: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMount {
    pub source: VolumeSource,
    pub destination: String,
    pub read_only: bool,
}

/// A device node passed through, as found on the device. It is bind-mounted rather
/// than re-created with mknod: a node made elsewhere does not open every device (a
/// pseudo-terminal's slave only opens through its own devpts), and the cgroup rule
/// below is what grants access either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// The node on the device, links resolved.
    pub host_path: PathBuf,
    pub container_path: String,
    /// `c` or `b`.
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    /// Any of `r`, `w`, `m`.
    pub access: String,
}

/// Everything that decides one container's `config.json`.
#[derive(Debug, Clone, Copy)]
pub struct BundleSpec<'a> {
    /// Runtime id; names the cgroup `/<cgroup_parent>/<id>`.
    pub id: &'a str,
    /// The cgroup all of this agent's containers live under (`flotilla`), so that two
    /// agents on one host (tests, simulators) never share one.
    pub cgroup_parent: &'a str,
    pub container: &'a DesiredContainer,
    /// The app's network mode: `Host` shares the device's network namespace.
    pub network: NetworkMode,
    pub image: &'a ImageRunConfig,
    /// Absolute path of the container's root filesystem (see [`crate::rootfs`]).
    pub rootfs: &'a Path,
    /// UTS hostname; empty means the container's name.
    pub hostname: &'a str,
    pub pod: PodNamespaces<'a>,
    /// The pod's `/etc/hosts` (its containers by name), mounted read-only in place of
    /// the device's.
    pub etc_hosts: Option<&'a Path>,
    pub mounts: &'a [ContainerMount],
    pub devices: &'a [HostDevice],
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("container {0}: nothing to run: set command or args, or use an image with an entrypoint or cmd")]
    NoCommand(String),
    #[error("container {container}: working directory {dir:?} must be an absolute path")]
    RelativeWorkingDir { container: String, dir: String },
    #[error("container {container}: environment variable name {name:?} is empty or contains '='")]
    InvalidEnvName { container: String, name: String },
    #[error("container {container}: user {user:?}: {reason}")]
    User { container: String, user: String, reason: String },
    #[error("rootfs {0} must be an absolute path")]
    RelativeRootfs(PathBuf),
    #[error("building the OCI spec: {0}")]
    Spec(#[from] OciSpecError),
    #[error("container {container}: unknown capability {name:?}")]
    Capability { container: String, name: String },
    #[error(
        "container {container}: capability {name:?} is asked for, but the agent does not hold it on this \
         device (run the agent with it in its bounding set, or drop it from addCapabilities)"
    )]
    CapabilityNotHeld { container: String, name: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The process identity resolved from the image's user string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// From the passwd entry; `/` when the user has none.
    pub home: String,
}

/// What the bundle needs to know of the device: the files host-network containers get
/// bind-mounted read-only, if present, the kernel (for the seccomp profile) and the
/// capabilities the agent holds (a container gets no more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    pub resolv_conf: bool,
    pub hosts: bool,
    pub kernel: KernelVersion,
    pub capabilities: CapabilityMask,
    /// The kernel enforces a container's device rules: cgroup v1's `devices`
    /// controller. On cgroup v2 libcontainer would need an eBPF program it is not
    /// built with, so there `CAP_MKNOD` is left out of the default set.
    pub device_rules: bool,
}

impl HostFacts {
    pub fn of_this_host() -> HostFacts {
        HostFacts {
            resolv_conf: Path::new("/etc/resolv.conf").is_file(),
            hosts: Path::new("/etc/hosts").is_file(),
            kernel: KernelVersion::running(),
            capabilities: CapabilityMask::held(),
            device_rules: !unified_cgroups(),
        }
    }
}

impl Default for HostFacts {
    /// A device with neither file, an unknown kernel, and an agent holding every
    /// capability.
    fn default() -> HostFacts {
        HostFacts {
            resolv_conf: false,
            hosts: false,
            kernel: KernelVersion::default(),
            capabilities: CapabilityMask::ALL,
            device_rules: true,
        }
    }
}

/// The capabilities `c` runs with on a host with `facts`.
fn container_capabilities(
    c: &DesiredContainer,
    facts: &HostFacts,
) -> Result<HashSet<Capability>, BundleError> {
    let mut caps = capabilities::for_container(c, facts.capabilities)?;
    let sec = &c.security;
    let asked_mknod = sec.add_capabilities.iter().any(|a| {
        let a = a.to_ascii_uppercase();
        a == "ALL" || a.trim_start_matches("CAP_") == "MKNOD"
    });
    if !facts.device_rules && !sec.privileged && !asked_mknod {
        // Nothing stops a device node once made: make none.
        caps.remove(&Capability::Mknod);
    }
    Ok(caps)
}

/// The seccomp profile a container with the default security settings gets on this
/// host: the runtime helper compiles it while it waits for its first request, so the
/// first containers after a boot do not wait for libseccomp.
pub fn usual_seccomp_profile() -> Option<LinuxSeccomp> {
    usual_seccomp_profile_on(&HostFacts::of_this_host())
}

fn usual_seccomp_profile_on(facts: &HostFacts) -> Option<LinuxSeccomp> {
    let caps = container_capabilities(&DesiredContainer::default(), facts).ok()?;
    seccomp::default_profile(&caps, SeccompArch::native(), facts.kernel).ok()
}

/// Whether `/sys/fs/cgroup` is the cgroup v2 hierarchy (`CGROUP2_SUPER_MAGIC`).
// The field is a C long: 32 bits on armv7, where the cast is needed.
#[allow(clippy::unnecessary_cast)]
pub fn unified_cgroups() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup").is_ok_and(|s| s.filesystem_type().0 as i64 == 0x6367_7270)
}

/// Kubernetes' rule (Docker's too): `command` replaces the image's entrypoint and
/// `args` its cmd; a `command` without `args` drops the image's cmd.
pub fn process_args(
    container: &DesiredContainer,
    image: &ImageRunConfig,
) -> Result<Vec<String>, BundleError> {
    let args: Vec<String> = match (container.command.is_empty(), container.args.is_empty()) {
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
        (true, false) => image.entrypoint.iter().chain(&container.args).cloned().collect(),
        (false, true) => container.command.clone(),
        (false, false) => container.command.iter().chain(&container.args).cloned().collect(),
    };
    if args.first().is_none_or(|a| a.is_empty()) {
        return Err(BundleError::NoCommand(container.name.clone()));
    }
    Ok(args)
}

/// Image environment, overridden key by key by the container's, in a stable order
/// (image order, then new container keys), plus `PATH`, `HOME` and `HOSTNAME` defaults.
pub fn merge_env(
    container: &DesiredContainer,
    image_env: &[String],
    home: &str,
    hostname: &str,
) -> Result<Vec<String>, BundleError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    };
    for entry in image_env {
        // An image entry without '=' carries no value; Docker drops it too.
        if let Some((k, v)) = entry.split_once('=')
            && !k.is_empty()
        {
            set(k, v);
        }
    }
    for (k, v) in &container.env {
        if k.is_empty() || k.contains('=') {
            return Err(BundleError::InvalidEnvName { container: container.name.clone(), name: k.clone() });
        }
        set(k, v);
    }
    for (k, v) in [("PATH", DEFAULT_PATH), ("HOME", home), ("HOSTNAME", hostname)] {
        if !env.iter().any(|(key, _)| key == k) {
            env.push((k.to_string(), v.to_string()));
        }
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        Some(PasswdEntry {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
            home: f.get(5)?,
        })
    })
}

/// (name, gid, members) of each `/etc/group` line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let members = f.get(3).map(|m| m.split(',').filter(|m| !m.is_empty()).collect()).unwrap_or_default();
        Some((*f.first()?, f.get(2)?.parse().ok()?, members))
    })
}

/// Docker's user rules: `""` is root; `name` or `uid`, optionally `:group` or `:gid`;
/// names come from the image's files, numbers need no entry (group 0 then). A user
/// with a passwd entry also gets the groups that list it as a member.
pub fn resolve_user(user: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ResolvedUser, String> {
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| format!("no user {user_part:?} in the image's /etc/passwd"))?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user_part.parse::<u32>().map_err(|e| e.to_string())?,
    };
    let gid = match group_part {
        None | Some("") => entry.as_ref().map_or(0, |e| e.gid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        },
    };
    let mut additional_gids = Vec::new();
    if let Some(e) = &entry {
        for (_, g, members) in group_entries(group) {
            if g != gid && members.contains(&e.name) && !additional_gids.contains(&g) {
                additional_gids.push(g);
            }
        }
    }
    let home = entry.as_ref().map(|e| e.home).filter(|h| !h.is_empty()).unwrap_or("/").to_string();
    Ok(ResolvedUser { uid, gid, additional_gids, home })
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
}

fn volume_mounts(list: &[ContainerMount]) -> Result<Vec<Mount>, OciSpecError> {
    list.iter()
        .map(|m| {
            let ro: &[&str] = if m.read_only { &["ro"] } else { &[] };
            match &m.source {
                VolumeSource::Bind(path) => {
                    let mut options = vec!["rbind", "nosuid", "nodev"];
                    options.extend(ro);
                    mount(&m.destination, "bind", &path.to_string_lossy(), &options)
                }
                VolumeSource::Tmpfs { size_bytes } => {
                    let size = format!("size={size_bytes}");
                    let mut options = vec!["nosuid", "nodev", "mode=1777", size.as_str()];
                    options.extend(ro);
                    mount(&m.destination, "tmpfs", "tmpfs", &options)
                }
            }
        })
        .collect()
}

/// runc's default mounts; `/sys` is read-write for a privileged container, as Docker's
/// `--privileged` makes it.
fn mounts(network: NetworkMode, privileged: bool, host_files: HostFacts) -> Result<Vec<Mount>, OciSpecError> {
    let sys: &[&str] =
        if privileged { &["nosuid", "noexec", "nodev"] } else { &["nosuid", "noexec", "nodev", "ro"] };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", sys)?,
    ];
    if network == NetworkMode::Host {
        // Sharing the host's network means sharing its name resolution too.
        let ro_bind = ["rbind", "ro", "nosuid", "nodev", "noexec"];
        if host_files.resolv_conf {
            mounts.push(mount("/etc/resolv.conf", "bind", "/etc/resolv.conf", &ro_bind)?);
        }
        if host_files.hosts {
            mounts.push(mount("/etc/hosts", "bind", "/etc/hosts", &ro_bind)?);
        }
    }
    Ok(mounts)
}

fn resources(
    c: &DesiredContainer,
    devices: &[HostDevice],
) -> Result<oci_spec::runtime::LinuxResources, OciSpecError> {
    // Deny every device, then libcontainer allows its defaults (null, zero, tty, ...),
    // and the devices passed through; a privileged container gets them all.
    let privileged = c.security.privileged;
    let mut rules = vec![LinuxDeviceCgroupBuilder::default().allow(privileged).access("rwm").build()?];
    for d in devices {
        let typ = if d.kind == 'b' { LinuxDeviceType::B } else { LinuxDeviceType::C };
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(d.major)
                .minor(d.minor)
                .access(d.access.clone())
                .build()?,
        );
    }
    let mut r = LinuxResourcesBuilder::default().devices(rules);
    if let Some(bytes) = c.limits.memory_bytes {
        r = r.memory(LinuxMemoryBuilder::default().limit(i64::try_from(bytes).unwrap_or(i64::MAX)).build()?);
    }
    let pids = c.limits.pids.unwrap_or(DEFAULT_PIDS_LIMIT);
    r = r.pids(LinuxPidsBuilder::default().limit(i64::try_from(pids).unwrap_or(i64::MAX)).build()?);
    // The kernel refuses quotas under 1 ms; shares follow Kubernetes (1024 per CPU),
    // from the request when there is one, else from the limit.
    let shares = c.limits.cpu_shares.or(c.limits.cpu_millis.map(|m| (m.saturating_mul(1024) / 1000).max(2)));
    if c.limits.cpu_millis.is_some() || shares.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(millis) = c.limits.cpu_millis {
            let quota =
                i64::try_from(millis.saturating_mul(CPU_PERIOD_US / 1000)).unwrap_or(i64::MAX).max(1000);
            cpu = cpu.period(CPU_PERIOD_US).quota(quota);
        }
        if let Some(shares) = shares {
            cpu = cpu.shares(shares);
        }
        r = r.cpu(cpu.build()?);
    }
    r.build()
}

/// The container's OCI runtime spec. Pure: every input is an argument.
pub fn build_spec(
    spec: &BundleSpec<'_>,
    user: &ResolvedUser,
    host_files: HostFacts,
) -> Result<Spec, BundleError> {
    let c = spec.container;
    if !spec.rootfs.is_absolute() {
        return Err(BundleError::RelativeRootfs(spec.rootfs.to_path_buf()));
    }
    let cwd =
        [&c.working_dir, &spec.image.working_dir].into_iter().find(|d| !d.is_empty()).map_or("/", |d| d);
    if !cwd.starts_with('/') {
        return Err(BundleError::RelativeWorkingDir { container: c.name.clone(), dir: cwd.to_string() });
    }
    let hostname = if spec.hostname.is_empty() { c.name.as_str() } else { spec.hostname };
    let caps = container_capabilities(c, &host_files)?;
    let sec = &c.security;
    // Docker's profile, folded by what this container may do; none when privileged.
    let seccomp = if sec.privileged {
        None
    } else {
        Some(seccomp::default_profile(&caps, SeccompArch::native(), host_files.kernel)?)
    };
    let uid = sec.run_as_user.unwrap_or(user.uid);
    let gid = sec.run_as_group.unwrap_or(user.gid);
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(process_args(c, spec.image)?)
        .env(merge_env(c, &spec.image.env, &user.home, hostname)?)
        .cwd(cwd)
        .user(UserBuilder::default().uid(uid).gid(gid).additional_gids(user.additional_gids.clone()).build()?)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()?,
        )
        .no_new_privileges(!sec.privileged)
        .build()?;

    let mut namespaces = Vec::new();
    if let Some(user) = spec.pod.user {
        // Joined first by libcontainer (whatever the order here): the pod's network and
        // IPC namespaces belong to it, and the container's new ones will too.
        namespaces.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User).path(user).build()?);
    }
    namespaces.extend([
        LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Pid).build()?,
        LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Uts).build()?,
        LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Mount).build()?,
    ]);
    let mut ipc = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Ipc);
    if let Some(path) = spec.pod.ipc {
        ipc = ipc.path(path);
    }
    namespaces.push(ipc.build()?);
    if spec.network != NetworkMode::Host {
        let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(path) = spec.pod.net {
            net = net.path(path);
        }
        namespaces.push(net.build()?);
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(format!("/{}/{}", spec.cgroup_parent, spec.id)))
        .resources(resources(c, spec.devices)?);
    linux = if sec.privileged {
        linux.masked_paths(Vec::<String>::new()).readonly_paths(Vec::<String>::new())
    } else {
        linux
            .masked_paths(MASKED_PATHS.iter().map(|p| p.to_string()).collect::<Vec<_>>())
            .readonly_paths(READONLY_PATHS.iter().map(|p| p.to_string()).collect::<Vec<_>>())
    };
    if let Some(profile) = seccomp {
        linux = linux.seccomp(profile);
    }
    let host_files =
        if spec.etc_hosts.is_some() { HostFacts { hosts: false, ..host_files } } else { host_files };
    let mut all_mounts = mounts(spec.network, sec.privileged, host_files)?;
    if let Some(hosts) = spec.etc_hosts {
        all_mounts.push(mount(
            "/etc/hosts",
            "bind",
            &hosts.to_string_lossy(),
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }
    all_mounts.extend(volume_mounts(spec.mounts)?);
    for d in spec.devices {
        let mut options = vec!["bind", "nosuid", "noexec"];
        if !d.access.contains('w') {
            options.push("ro");
        }
        all_mounts.push(mount(&d.container_path, "bind", &d.host_path.to_string_lossy(), &options)?);
    }

    Ok(SpecBuilder::default()
        .version(oci_spec::runtime::VERSION)
        .root(RootBuilder::default().path(spec.rootfs).readonly(sec.read_only_root_filesystem).build()?)
        .hostname(hostname)
        .process(process)
        .mounts(all_mounts)
        .linux(linux.build()?)
        .build()?)
}

/// Largest `/etc/passwd` or `/etc/group` we read from an image.
const MAX_ID_FILE: u64 = 4 << 20;

/// Reads `rel` inside `root` with every path component, symlinks included, resolved
/// as if `root` were `/` (openat2 `RESOLVE_IN_ROOT`): an image's `/etc/passwd` that
/// is a symlink to `/etc/shadow` reads the image's shadow file, never the host's.
fn read_in_rootfs(root: &Path, rel: &str) -> io::Result<Option<String>> {
    let dir = File::open(root)?;
    let path =
        std::ffi::CString::new(rel.as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: open_how is plain old data; all-zero is valid and then filled in.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid dirfd, NUL-terminated path, and `how` with its true size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound { Ok(None) } else { Err(e) };
    }
    // SAFETY: openat2 returned a fresh fd that we now own.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let mut bytes = Vec::new();
    file.take(MAX_ID_FILE).read_to_end(&mut bytes)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Writes `<dir>/config.json` for `spec` (creating `dir`) and returns `dir`, the bundle
/// path to pass to [`crate::ContainerRuntime::create`]. Rewriting is harmless: the file
/// is replaced atomically.
pub fn write_bundle(dir: &Path, spec: &BundleSpec<'_>) -> Result<PathBuf, BundleError> {
    let io_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { what, path, source }
    };
    let user_str = spec.image.user.as_str();
    // Only names need the image's files, but a passwd entry also supplies HOME and the
    // supplementary groups, so read them whenever they exist.
    let passwd = read_in_rootfs(spec.rootfs, "etc/passwd")
        .map_err(io_err("reading", &spec.rootfs.join("etc/passwd")))?;
    let group = read_in_rootfs(spec.rootfs, "etc/group")
        .map_err(io_err("reading", &spec.rootfs.join("etc/group")))?;
    let user = resolve_user(user_str, passwd.as_deref(), group.as_deref()).map_err(|reason| {
        BundleError::User { container: spec.container.name.clone(), user: user_str.to_string(), reason }
    })?;
    let host_files = HostFacts::of_this_host();
    let oci = build_spec(spec, &user, host_files)?;
    let json = serde_json::to_vec_pretty(&oci).map_err(|e| BundleError::Spec(OciSpecError::SerDe(e)))?;

    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let tmp = dir.join(".config.json.tmp");
    let config = dir.join("config.json");
    let mut f = File::create(&tmp).map_err(io_err("writing", &tmp))?;
    f.write_all(&json).and_then(|()| f.sync_all()).map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, &config).map_err(io_err("renaming into place", &config))?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxNamespaceType as Ns;
    use shared_proto::manifest::ContainerLimits;

    fn container() -> DesiredContainer {
        DesiredContainer {
            name: "web".into(),
            image: "demo:1".into(),
            image_digest: "sha256:ab".into(),
            command: vec![],
            args: vec![],
            env: vec![],
            ports: vec![],
            limits: ContainerLimits::default(),
            working_dir: String::new(),
            ..Default::default()
        }
    }

    fn image() -> ImageRunConfig {
        ImageRunConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/opt/bin:/bin".into(), "MODE=prod".into(), "NOVALUE".into()],
            working_dir: "/srv".into(),
            user: String::new(),
        }
    }

    fn root() -> ResolvedUser {
        ResolvedUser { uid: 0, gid: 0, additional_gids: vec![], home: "/root".into() }
    }

    fn spec_for(c: &DesiredContainer, img: &ImageRunConfig, network: NetworkMode, hf: HostFacts) -> Spec {
        let bs = BundleSpec {
            cgroup_parent: "flotilla",
            id: "web-1",
            container: c,
            network,
            image: img,
            rootfs: Path::new("/rootfs"),
            hostname: "",
            pod: PodNamespaces::default(),
            etc_hosts: None,
            mounts: &[],
            devices: &[],
        };
        build_spec(&bs, &root(), hf).unwrap()
    }

    #[test]
    fn the_helper_compiles_ahead_the_profile_a_default_container_gets() {
        let hosts = [
            HostFacts::default(),
            HostFacts { device_rules: false, ..HostFacts::default() },
            HostFacts { kernel: KernelVersion(5, 10), ..HostFacts::default() },
            HostFacts {
                capabilities: CapabilityMask::of(capabilities::DEFAULT_CAPABILITIES),
                ..HostFacts::default()
            },
        ];
        for hf in hosts {
            let spec = spec_for(&container(), &image(), NetworkMode::None, hf);
            let profile = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
            // The cache is keyed by the profile: equal means the create finds it compiled.
            assert_eq!(Some(profile), usual_seccomp_profile_on(&hf));
        }
    }

    #[test]
    fn the_sandbox_by_default_and_what_an_app_gives_up_of_it() {
        let spec = spec_for(&container(), &image(), NetworkMode::None, HostFacts::default());
        let process = spec.process().as_ref().unwrap();
        let caps = process.capabilities().as_ref().unwrap().bounding().as_ref().unwrap();
        assert!(!caps.contains(&Capability::NetRaw), "no raw sockets unless asked");
        assert!(caps.contains(&Capability::NetBindService));
        assert_eq!(process.no_new_privileges(), Some(true));
        let linux = spec.linux().as_ref().unwrap();
        let pids = linux.resources().as_ref().unwrap().pids().as_ref().unwrap();
        assert_eq!(pids.limit(), DEFAULT_PIDS_LIMIT as i64, "a default pids limit");
        assert!(linux.masked_paths().as_ref().is_some_and(|m| m.contains(&"/proc/kcore".to_string())));
        let allowed = |spec: &Spec, name: &str| {
            let seccomp = spec.linux().as_ref().unwrap().seccomp().as_ref().expect("a seccomp profile");
            seccomp.syscalls().as_ref().unwrap().iter().any(|s| {
                s.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
                    && s.args().is_none()
                    && s.names().iter().any(|n| n == name)
            })
        };
        assert!(allowed(&spec, "read") && !allowed(&spec, "unshare") && !allowed(&spec, "keyctl"));

        let mut c = container();
        c.security.add_capabilities = vec!["NET_RAW".into(), "cap_sys_time".into()];
        c.security.drop_capabilities = vec!["CHOWN".into()];
        c.security.run_as_user = Some(1000);
        c.security.read_only_root_filesystem = true;
        let spec = spec_for(&c, &image(), NetworkMode::None, HostFacts::default());
        let process = spec.process().as_ref().unwrap();
        let caps = process.capabilities().as_ref().unwrap().effective().as_ref().unwrap();
        assert!(caps.contains(&Capability::NetRaw) && caps.contains(&Capability::SysTime));
        assert!(!caps.contains(&Capability::Chown));
        assert!(!allowed(&spec, "clock_settime") || caps.contains(&Capability::SysTime));
        assert!(allowed(&spec, "clock_settime"), "SYS_TIME brings its calls with it");
        assert_eq!(process.user().uid(), 1000);
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());

        c.security = Default::default();
        c.security.drop_capabilities = vec!["ALL".into()];
        let spec = spec_for(&c, &image(), NetworkMode::None, HostFacts::default());
        assert!(
            spec.process()
                .as_ref()
                .unwrap()
                .capabilities()
                .as_ref()
                .unwrap()
                .bounding()
                .as_ref()
                .unwrap()
                .is_empty()
        );

        c.security = Default::default();
        c.security.privileged = true;
        let spec = spec_for(&c, &image(), NetworkMode::None, HostFacts::default());
        let process = spec.process().as_ref().unwrap();
        assert!(
            process
                .capabilities()
                .as_ref()
                .unwrap()
                .bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
        assert_eq!(process.no_new_privileges(), Some(false));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.masked_paths().as_ref().is_none_or(|m| m.is_empty()), "privileged: nothing masked");
        assert!(linux.seccomp().is_none(), "privileged: unconfined");
        let rules = linux.resources().as_ref().unwrap().devices().as_ref().unwrap();
        assert!(rules[0].allow(), "privileged: every device");
        let sys =
            spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new("/sys")).unwrap();
        assert!(!sys.options().as_ref().unwrap().contains(&"ro".to_string()), "privileged: /sys writable");
        assert_eq!(process.capabilities().as_ref().unwrap().bounding().as_ref().unwrap().len(), 41);
        // Never more than the agent holds: this one lacks SYS_RESOURCE.
        let held = CapabilityMask(CapabilityMask::ALL.0 & !(1 << 24));
        let spec =
            spec_for(&c, &image(), NetworkMode::None, HostFacts { capabilities: held, ..Default::default() });
        let process = spec.process().as_ref().unwrap();
        let caps = process.capabilities().as_ref().unwrap();
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            let set = set.as_ref().unwrap();
            assert!(set.len() == 40 && !set.contains(&Capability::SysResource), "{set:?}");
        }
        // Without device rules (cgroup v2), a privileged container keeps MKNOD…
        let v2 = HostFacts { device_rules: false, ..Default::default() };
        let spec = spec_for(&c, &image(), NetworkMode::None, v2);
        let caps =
            spec.process().as_ref().unwrap().capabilities().as_ref().unwrap().bounding().clone().unwrap();
        assert!(caps.contains(&Capability::Mknod));
        // …a default one loses it, unless it asks.
        let mut plain = container();
        let bounding = |c: &DesiredContainer| {
            let spec = spec_for(c, &image(), NetworkMode::None, v2);
            spec.process().as_ref().unwrap().capabilities().as_ref().unwrap().bounding().clone().unwrap()
        };
        assert!(!bounding(&plain).contains(&Capability::Mknod));
        plain.security.add_capabilities = vec!["CAP_MKNOD".into()];
        assert!(bounding(&plain).contains(&Capability::Mknod));
        let on_v1 = spec_for(&container(), &image(), NetworkMode::None, HostFacts::default());
        let caps =
            on_v1.process().as_ref().unwrap().capabilities().as_ref().unwrap().bounding().clone().unwrap();
        assert!(caps.contains(&Capability::Mknod), "v1 keeps Docker's set");
    }

    #[test]
    fn pods_volumes_and_devices() {
        let c = container();
        let img = image();
        let mounts = [
            ContainerMount {
                source: VolumeSource::Bind("/var/lib/flotilla/volumes/pos/db".into()),
                destination: "/data".into(),
                read_only: false,
            },
            ContainerMount {
                source: VolumeSource::Tmpfs { size_bytes: 1 << 20 },
                destination: "/scratch".into(),
                read_only: true,
            },
        ];
        let devices = [HostDevice {
            host_path: "/dev/pts/3".into(),
            container_path: "/dev/ttyUSB0".into(),
            kind: 'c',
            major: 188,
            minor: 0,
            access: "rw".into(),
        }];
        let bs = BundleSpec {
            cgroup_parent: "flotilla",
            id: "pos_main_1",
            container: &c,
            network: NetworkMode::None,
            image: &img,
            rootfs: Path::new("/rootfs"),
            hostname: "",
            pod: PodNamespaces {
                net: Some(Path::new("/run/pods/pos/net")),
                ipc: Some(Path::new("/run/pods/pos/ipc")),
                user: Some(Path::new("/run/pods/pos/user")),
            },
            etc_hosts: Some(Path::new("/run/pods/pos/hosts")),
            mounts: &mounts,
            devices: &devices,
        };
        let spec = build_spec(&bs, &root(), HostFacts::default()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        let path_of = |t: Ns| ns.iter().find(|n| n.typ() == t).and_then(|n| n.path().clone());
        assert_eq!(path_of(Ns::Network).unwrap(), Path::new("/run/pods/pos/net"));
        assert_eq!(path_of(Ns::Ipc).unwrap(), Path::new("/run/pods/pos/ipc"));
        assert_eq!(path_of(Ns::Pid), None, "each container its own pid namespace");
        assert_eq!(path_of(Ns::User).unwrap(), Path::new("/run/pods/pos/user"), "the pod's user namespace");
        let m = spec.mounts().as_ref().unwrap();
        let data = m.iter().find(|m| m.destination() == Path::new("/data")).unwrap();
        assert_eq!(data.source().as_deref(), Some(Path::new("/var/lib/flotilla/volumes/pos/db")));
        let scratch = m.iter().find(|m| m.destination() == Path::new("/scratch")).unwrap();
        assert_eq!(scratch.typ().as_deref(), Some("tmpfs"));
        assert!(scratch.options().as_ref().unwrap().contains(&"ro".to_string()));
        let hosts: Vec<_> = m.iter().filter(|m| m.destination() == Path::new("/etc/hosts")).collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].source().as_deref(), Some(Path::new("/run/pods/pos/hosts")));
        let dev = m.iter().find(|m| m.destination() == Path::new("/dev/ttyUSB0")).unwrap();
        assert_eq!(dev.source().as_deref(), Some(Path::new("/dev/pts/3")), "the device's own node");
        assert!(!dev.options().as_ref().unwrap().contains(&"nodev".to_string()));
        let rules = linux.resources().as_ref().unwrap().devices().as_ref().unwrap();
        assert!(!rules[0].allow() && rules[1].allow() && rules[1].major() == Some(188));
    }

    #[test]
    fn args_follow_kubernetes_rules() {
        let img = image();
        let mut c = container();
        assert_eq!(process_args(&c, &img).unwrap(), ["/entry", "serve", "--port=80"]);
        c.args = vec!["debug".into()];
        assert_eq!(process_args(&c, &img).unwrap(), ["/entry", "debug"]);
        c.command = vec!["/bin/sh".into(), "-c".into()];
        assert_eq!(process_args(&c, &img).unwrap(), ["/bin/sh", "-c", "debug"]);
        c.args.clear();
        assert_eq!(process_args(&c, &img).unwrap(), ["/bin/sh", "-c"], "command drops the image cmd");
        let empty = ImageRunConfig::default();
        assert!(matches!(process_args(&container(), &empty), Err(BundleError::NoCommand(_))));
        let only_cmd = ImageRunConfig { cmd: vec!["/bin/true".into()], ..Default::default() };
        assert_eq!(process_args(&container(), &only_cmd).unwrap(), ["/bin/true"]);
    }

    #[test]
    fn env_overrides_in_place_and_adds_defaults() {
        let mut c = container();
        c.env = vec![("MODE".into(), "dev".into()), ("EXTRA".into(), "1".into())];
        let env = merge_env(&c, &image().env, "/root", "web").unwrap();
        assert_eq!(env, ["PATH=/opt/bin:/bin", "MODE=dev", "EXTRA=1", "HOME=/root", "HOSTNAME=web"]);
        let env = merge_env(&container(), &[], "/", "h").unwrap();
        assert_eq!(env[0], format!("PATH={DEFAULT_PATH}"));
        c.env = vec![("A=B".into(), "x".into())];
        assert!(matches!(merge_env(&c, &[], "/", "h"), Err(BundleError::InvalidEnvName { .. })));
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n\
                          app:x:1000:1001:App:/home/app:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\napp:x:1001:\nvideo:x:44:app,other\naudio:x:29:other\n";

    #[test]
    fn users_resolve_like_docker() {
        let r = |u: &str| resolve_user(u, Some(PASSWD), Some(GROUP));
        assert_eq!(
            r("").unwrap(),
            ResolvedUser { uid: 0, gid: 0, additional_gids: vec![], home: "/root".into() }
        );
        assert_eq!(
            r("app").unwrap(),
            ResolvedUser { uid: 1000, gid: 1001, additional_gids: vec![44], home: "/home/app".into() }
        );
        assert_eq!(
            (r("1000").unwrap().uid, r("1000").unwrap().gid),
            (1000, 1001),
            "numeric uid with an entry"
        );
        assert_eq!(
            r("4242").unwrap(),
            ResolvedUser { uid: 4242, gid: 0, additional_gids: vec![], home: "/".into() }
        );
        assert_eq!((r("app:audio").unwrap().gid, r("app:audio").unwrap().additional_gids), (29, vec![44]));
        assert_eq!(r("4242:7").unwrap().gid, 7);
        assert!(r("ghost").unwrap_err().contains("no user \"ghost\""));
        assert!(r("app:ghosts").unwrap_err().contains("no group"));
        assert_eq!(resolve_user("5:6", None, None).unwrap().gid, 6, "numbers need no files");
    }

    #[test]
    fn limits_map_to_cgroup_resources() {
        let mut c = container();
        c.limits = ContainerLimits {
            cpu_millis: Some(250),
            memory_bytes: Some(64 << 20),
            pids: Some(50),
            ..Default::default()
        };
        let spec = spec_for(&c, &image(), NetworkMode::None, HostFacts::default());
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/flotilla/web-1")));
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().unwrap().limit(), Some(64 << 20));
        assert_eq!(res.pids().unwrap().limit(), 50);
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!((cpu.period(), cpu.quota(), cpu.shares()), (Some(100_000), Some(25_000), Some(256)));
        let devices = res.devices().as_ref().unwrap();
        assert_eq!((devices[0].allow(), devices[0].access().as_deref()), (false, Some("rwm")));

        c.limits = ContainerLimits { cpu_millis: Some(5), ..Default::default() };
        let spec = spec_for(&c, &image(), NetworkMode::None, HostFacts::default());
        let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(1000), "kernel minimum");
        assert!(res.memory().is_none());
        assert_eq!(res.pids().as_ref().unwrap().limit(), DEFAULT_PIDS_LIMIT as i64);
    }

    #[test]
    fn namespaces_mounts_and_process_follow_network_mode() {
        let c = container();
        let hf = HostFacts { resolv_conf: true, hosts: false, ..Default::default() };
        let none = spec_for(&c, &image(), NetworkMode::None, hf);
        let host = spec_for(&c, &image(), NetworkMode::Host, hf);
        let types = |s: &Spec| -> Vec<Ns> {
            s.linux().as_ref().unwrap().namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect()
        };
        assert_eq!(types(&none), [Ns::Pid, Ns::Uts, Ns::Mount, Ns::Ipc, Ns::Network]);
        assert_eq!(types(&host), [Ns::Pid, Ns::Uts, Ns::Mount, Ns::Ipc]);
        let dests = |s: &Spec| -> Vec<String> {
            s.mounts().as_ref().unwrap().iter().map(|m| m.destination().display().to_string()).collect()
        };
        assert_eq!(dests(&none), ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"]);
        assert_eq!(dests(&host).last().map(String::as_str), Some("/etc/resolv.conf"));
        assert_eq!(dests(&host).len(), 7, "no /etc/hosts bind when the host has none");

        let p = none.process().as_ref().unwrap();
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.capabilities().as_ref().unwrap().bounding().as_ref().unwrap().len(), 13);
        assert!(
            p.capabilities()
                .as_ref()
                .unwrap()
                .bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::NetBindService)
        );
        assert!(
            !p.capabilities().as_ref().unwrap().bounding().as_ref().unwrap().contains(&Capability::SysAdmin)
        );
        assert_eq!(none.hostname().as_deref(), Some("web"));
        assert_eq!(none.root().as_ref().unwrap().path(), Path::new("/rootfs"));
        assert_eq!(none.linux().as_ref().unwrap().masked_paths().as_ref().unwrap().len(), 10);
        assert!(none.version().starts_with("1."));
    }

    #[test]
    fn image_files_are_read_inside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(dir.path().join("secret"), "host secret").unwrap();
        // An absolute symlink must resolve inside the rootfs, not on the host.
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("etc/passwd")).unwrap();
        fs::write(root.join("etc/group"), "g:x:5:\n").unwrap();
        assert_eq!(read_in_rootfs(&root, "etc/passwd").unwrap(), None);
        assert_eq!(read_in_rootfs(&root, "etc/group").unwrap().as_deref(), Some("g:x:5:\n"));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let mut c = container();
        c.working_dir = "relative".into();
        let img = image();
        let bs = BundleSpec {
            cgroup_parent: "flotilla",
            id: "x",
            container: &c,
            network: NetworkMode::Host,
            image: &img,
            rootfs: Path::new("/r"),
            hostname: "",
            pod: PodNamespaces::default(),
            etc_hosts: None,
            mounts: &[],
            devices: &[],
        };
        assert!(matches!(
            build_spec(&bs, &root(), HostFacts::default()),
            Err(BundleError::RelativeWorkingDir { .. })
        ));
        let c = container();
        let bs = BundleSpec { rootfs: Path::new("rel"), container: &c, ..bs };
        assert!(matches!(
            build_spec(&bs, &root(), HostFacts::default()),
            Err(BundleError::RelativeRootfs(_))
        ));
    }
}
