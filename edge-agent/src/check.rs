//! `flotilla-agent check`: what this host lacks to run containers, and how to fix it,
//! before the agent is installed for good. Raspberry Pi OS, for one, ships with the
//! memory cgroup disabled; the agent would otherwise fail on its first container.
//!
//! [`read_host`] gathers the facts (from `/proc`, `/sys` and the mount table, under a
//! chosen root so tests can hand it a fixture); [`assess`] is pure: facts in,
//! findings out.

use std::path::{Path, PathBuf};

/// What the preflight reads from the host.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// `/proc/cgroups`.
    pub cgroups: Option<String>,
    /// `/proc/self/mounts`.
    pub mounts: Option<String>,
    /// `cgroup.controllers` of the cgroup v2 root, when one is mounted.
    pub v2_controllers: Option<String>,
    /// `/proc/filesystems`.
    pub filesystems: Option<String>,
    /// Entries of `/proc/self/ns`.
    pub namespaces: Vec<String>,
    /// `/proc/sys/user/max_user_namespaces`.
    pub max_user_namespaces: Option<u64>,
    /// `/proc/self/status` has a `Seccomp:` line.
    pub seccomp: bool,
    pub euid: u32,
    /// The kernel command line file of this board's boot partition, if there is one.
    pub boot_cmdline: Option<PathBuf>,
    /// The agent's directories, when a config was given.
    pub state_dir: Option<DirFacts>,
    pub runtime_dir: Option<DirFacts>,
    /// What isolated networking needs.
    pub network: NetFacts,
}

/// What `network: Isolated` needs of the host.
#[derive(Debug, Clone, Default)]
pub struct NetFacts {
    /// The `nft` and `ip` binaries were found.
    pub nft: bool,
    pub ip: bool,
    /// `/proc/sys/net/bridge` exists: bridges, and bridged traffic through netfilter.
    pub bridge_netfilter: bool,
    /// `/proc/sys/net/ipv4/ip_forward`.
    pub ip_forward: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct DirFacts {
    pub path: PathBuf,
    /// Bytes free for an unprivileged writer, `None` when unknown.
    pub free: Option<u64>,
    /// Type of the file system it is on (`tmpfs`, `ext4`…).
    pub fs_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding { level: Level::Ok, what: what.into(), fix: None }
    }
    fn warn(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { level: Level::Warn, what: what.into(), fix: Some(fix.into()) }
    }
    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { level: Level::Fail, what: what.into(), fix: Some(fix.into()) }
    }
}

/// Below this much free space in `state_dir`, images will not fit for long.
pub const LOW_DISK: u64 = 512 << 20;

/// How the cgroup hierarchies are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    V2,
    Hybrid,
    V1,
    None,
}

fn layout(mounts: &str) -> Layout {
    let mut v1 = false;
    let mut v2_root = false;
    let mut v2_elsewhere = false;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (_, Some(point), Some(kind)) = (fields.next(), fields.next(), fields.next()) else { continue };
        match kind {
            "cgroup2" if point == "/sys/fs/cgroup" => v2_root = true,
            "cgroup2" => v2_elsewhere = true,
            "cgroup" => v1 = true,
            _ => {}
        }
    }
    match (v2_root, v1, v2_elsewhere) {
        (true, _, _) => Layout::V2,
        (false, true, true) => Layout::Hybrid,
        (false, true, false) => Layout::V1,
        (false, false, _) => Layout::None,
    }
}

/// Controllers enabled in `/proc/cgroups` (v1 and hybrid hosts).
fn v1_enabled(cgroups: &str) -> Vec<(String, bool)> {
    cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), *f.get(3)? == "1"))
        })
        .collect()
}

/// The fix for a controller the kernel was booted without.
fn cmdline_fix(facts: &HostFacts, args: &str) -> String {
    let file = facts.boot_cmdline.as_ref().map_or_else(
        || "the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub)".to_string(),
        |p| p.display().to_string(),
    );
    format!("add `{args}` to {file} and reboot")
}

/// Facts in, findings out: everything that decides is here.
pub fn assess(facts: &HostFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    out.push(if facts.euid == 0 {
        Finding::ok("running as root")
    } else {
        Finding::fail(
            format!("running as uid {}", facts.euid),
            "run the agent as root (its systemd unit does): it creates namespaces, cgroups and mounts",
        )
    });

    let layout = facts.mounts.as_deref().map_or(Layout::None, layout);
    let (enabled, missing): (Vec<&str>, Vec<&str>) = {
        let available: Vec<(String, bool)> = match layout {
            Layout::V2 => facts
                .v2_controllers
                .as_deref()
                .unwrap_or_default()
                .split_whitespace()
                .map(|c| (c.to_string(), true))
                .collect(),
            _ => facts.cgroups.as_deref().map(v1_enabled).unwrap_or_default(),
        };
        let on = |c: &str| available.iter().any(|(name, e)| name == c && *e);
        ["cpu", "memory", "pids"].into_iter().partition(|c| on(c))
    };
    match layout {
        Layout::None => out.push(Finding::fail(
            "no cgroup file system is mounted at /sys/fs/cgroup",
            "mount cgroup2 at /sys/fs/cgroup (systemd does this at boot)",
        )),
        Layout::V2 => out.push(Finding::ok("cgroups: v2 (unified)")),
        Layout::Hybrid => out.push(Finding::ok("cgroups: v1 controllers with v2 beside them (hybrid)")),
        Layout::V1 => out.push(Finding::ok("cgroups: v1")),
    }
    if layout != Layout::None {
        if !enabled.is_empty() {
            out.push(Finding::ok(format!("cgroup controllers: {}", enabled.join(", "))));
        }
        for c in missing {
            let (level, why, args) = match c {
                "memory" => {
                    (Level::Fail, "memory limits and OOM reports", "cgroup_enable=memory cgroup_memory=1")
                }
                "cpu" => (Level::Warn, "CPU limits", "cgroup_enable=cpu"),
                _ => {
                    (Level::Warn, "pids limits (a fork bomb could exhaust the device)", "cgroup_enable=pids")
                }
            };
            out.push(Finding {
                level,
                what: format!("the {c} cgroup controller is disabled: no {why}"),
                fix: Some(cmdline_fix(facts, args)),
            });
        }
    }

    let overlay = facts
        .filesystems
        .as_deref()
        .is_some_and(|f| f.lines().any(|l| l.split_whitespace().last() == Some("overlay")));
    out.push(if overlay {
        Finding::ok("overlayfs")
    } else {
        Finding::fail(
            "overlayfs is not available: containers' root file systems are overlays",
            "`modprobe overlay`, and add `overlay` to /etc/modules-load.d/flotilla.conf so it loads at boot",
        )
    });

    let required = ["mnt", "pid", "net", "ipc", "uts"];
    let absent: Vec<&str> =
        required.iter().copied().filter(|n| !facts.namespaces.iter().any(|have| have == n)).collect();
    out.push(if absent.is_empty() {
        Finding::ok(format!("namespaces: {}", required.join(", ")))
    } else {
        Finding::fail(
            format!("namespaces missing: {}", absent.join(", ")),
            "use a kernel built with CONFIG_NAMESPACES and the missing kinds",
        )
    });
    let user_ns = facts.namespaces.iter().any(|n| n == "user") && facts.max_user_namespaces.unwrap_or(0) > 0;
    out.push(if user_ns {
        Finding::ok("user namespaces")
    } else {
        Finding::warn(
            "user namespaces are unavailable: apps cannot ask for their own",
            "`sysctl -w user.max_user_namespaces=15000` (and in /etc/sysctl.d/ to keep it)",
        )
    });
    out.push(if facts.seccomp {
        Finding::ok("seccomp")
    } else {
        Finding::warn(
            "the kernel has no seccomp: containers run without a system call filter",
            "use a kernel built with CONFIG_SECCOMP_FILTER",
        )
    });

    assess_network(&facts.network, &mut out);

    if let Some(d) = &facts.state_dir {
        out.push(match d.free {
            None => Finding::ok(format!("state_dir {}", d.path.display())),
            Some(free) if free < LOW_DISK => Finding::warn(
                format!("state_dir {} has {} MiB free", d.path.display(), free >> 20),
                format!(
                    "free space, or move state_dir to a larger disk: images need at least {} MiB",
                    LOW_DISK >> 20
                ),
            ),
            Some(free) => Finding::ok(format!("state_dir {}: {} MiB free", d.path.display(), free >> 20)),
        });
    }
    if let Some(d) = &facts.runtime_dir {
        out.push(match d.fs_type.as_deref() {
            Some("tmpfs") => Finding::ok(format!("runtime_dir {} on tmpfs", d.path.display())),
            None => Finding::ok(format!("runtime_dir {}", d.path.display())),
            Some(other) => Finding::warn(
                format!("runtime_dir {} is on {other}, not tmpfs", d.path.display()),
                "put runtime_dir under /run: container state rewritten on an SD card wears it and slows every start, and a reboot must clear it",
            ),
        });
    }
    out
}

/// Isolated apps (`network: Isolated`) need these; host and none apps do not, so a
/// missing piece is a warning.
fn assess_network(n: &NetFacts, out: &mut Vec<Finding>) {
    let isolated = "apps with network Isolated cannot run";
    for (have, tool, package) in [(n.nft, "nft", "nftables"), (n.ip, "ip", "iproute2")] {
        out.push(if have {
            Finding::ok(format!("{tool} ({package})"))
        } else {
            Finding::warn(format!("{tool} is missing: {isolated}"), format!("apt-get install -y {package}"))
        });
    }
    out.push(if n.bridge_netfilter {
        Finding::ok("bridges, with bridged traffic through netfilter")
    } else {
        Finding::warn(
            format!("no bridge netfilter (/proc/sys/net/bridge): {isolated}, or their network policies cannot hold"),
            "`modprobe bridge br_netfilter veth`, and add them to /etc/modules-load.d/flotilla.conf so they load at boot",
        )
    });
    out.push(match n.ip_forward {
        Some(true) => Finding::ok("IPv4 forwarding"),
        Some(false) => Finding::warn(
            "IPv4 forwarding is off: the agent turns it on when the first isolated app arrives",
            "`sysctl -w net.ipv4.ip_forward=1` and put it in /etc/sysctl.d/ so the device forwards from boot",
        ),
        None => Finding::warn(
            format!("no /proc/sys/net/ipv4/ip_forward: {isolated}"),
            "use a kernel built with IPv4 networking (CONFIG_INET)",
        ),
    });
}

/// Reads what [`assess`] needs, with `/proc` and `/sys` under `root` (`/` normally).
pub fn read_host(root: &Path, dirs: Option<(&Path, &Path)>) -> HostFacts {
    let read = |p: &str| std::fs::read_to_string(root.join(p.trim_start_matches('/'))).ok();
    let mounts = read("/proc/self/mounts");
    let v2_controllers = mounts.as_deref().and_then(|m| {
        m.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f.get(1).map(|p| format!("{p}/cgroup.controllers")))?
        })
    });
    let namespaces = std::fs::read_dir(root.join("proc/self/ns"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    let boot_cmdline = ["boot/firmware/cmdline.txt", "boot/cmdline.txt"]
        .into_iter()
        .find(|p| root.join(p).exists())
        .map(|p| Path::new("/").join(p));
    let fs_type_of = |path: &Path| -> Option<String> {
        // The longest mount point that holds the path.
        let m = mounts.as_deref()?;
        m.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((*f.get(1)?, *f.get(2)?))
            })
            .filter(|(point, _)| path.starts_with(point))
            .max_by_key(|(point, _)| point.len())
            .map(|(_, kind)| kind.to_string())
    };
    // The counts are 32-bit on armv7.
    #[allow(clippy::unnecessary_cast)]
    let free = |s: nix::sys::statvfs::Statvfs| s.blocks_available() as u64 * s.fragment_size() as u64;
    let dir = |path: &Path| DirFacts {
        path: path.to_path_buf(),
        // On the file system it is, or will be created, on.
        free: path.ancestors().find_map(|p| nix::sys::statvfs::statvfs(p).ok()).map(free),
        // Where it is, or will be created.
        fs_type: fs_type_of(path),
    };
    HostFacts {
        cgroups: read("/proc/cgroups"),
        v2_controllers: v2_controllers.and_then(|p| read(&p)),
        mounts: mounts.clone(),
        filesystems: read("/proc/filesystems"),
        namespaces,
        max_user_namespaces: read("/proc/sys/user/max_user_namespaces").and_then(|s| s.trim().parse().ok()),
        seccomp: read("/proc/self/status").is_some_and(|s| s.lines().any(|l| l.starts_with("Seccomp:"))),
        euid: nix::unistd::geteuid().as_raw(),
        boot_cmdline,
        state_dir: dirs.map(|(s, _)| dir(s)),
        runtime_dir: dirs.map(|(_, r)| dir(r)),
        network: NetFacts {
            nft: has_tool("nft"),
            ip: has_tool("ip"),
            bridge_netfilter: root.join("proc/sys/net/bridge").is_dir(),
            ip_forward: read("/proc/sys/net/ipv4/ip_forward").map(|v| v.trim() == "1"),
        },
    }
}

/// Whether `name` is on the agent's `PATH` (where the agent will look for it).
fn has_tool(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|d| d.join(name).is_file())
}

/// Prints the findings; returns how many must be fixed.
pub fn print(findings: &[Finding]) -> usize {
    for f in findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("{tag}  {}", f.what);
        if let Some(fix) = &f.fix {
            println!("      fix: {fix}");
        }
    }
    let fails = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warns = findings.iter().filter(|f| f.level == Level::Warn).count();
    match fails {
        0 => println!("this host can run the agent ({warns} warning(s))"),
        n => println!("{n} problem(s) to fix before the agent can run containers, {warns} warning(s)"),
    }
    fails
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n/dev/sda1 / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n";
    const V2_MOUNTS: &str = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n/dev/mmcblk0p2 / ext4 rw 0 0\n";
    /// Raspberry Pi OS as shipped: the memory controller is compiled in, disabled at boot.
    const PI_CGROUPS: &str =
        "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t0\t80\t1\nmemory\t0\t80\t0\npids\t0\t80\t1\n";

    fn healthy() -> HostFacts {
        HostFacts {
            cgroups: Some(PI_CGROUPS.replace("memory\t0\t80\t0", "memory\t0\t80\t1")),
            mounts: Some(HYBRID_MOUNTS.into()),
            v2_controllers: None,
            filesystems: Some("nodev\ttmpfs\nnodev\toverlay\n\text4\n".into()),
            namespaces: ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"].map(String::from).to_vec(),
            max_user_namespaces: Some(1000),
            seccomp: true,
            euid: 0,
            boot_cmdline: None,
            state_dir: None,
            runtime_dir: None,
            network: NetFacts { nft: true, ip: true, bridge_netfilter: true, ip_forward: Some(true) },
        }
    }

    #[test]
    fn what_isolated_networking_lacks_is_a_warning_with_its_fix() {
        let mut facts = healthy();
        facts.network = NetFacts { nft: false, ip: true, bridge_netfilter: false, ip_forward: Some(false) };
        let f = assess(&facts);
        assert!(fails(&f).is_empty(), "host and none apps still run: {f:?}");
        let warned: Vec<&Finding> = f.iter().filter(|f| f.level == Level::Warn).collect();
        assert_eq!(warned.len(), 3, "{warned:?}");
        assert!(warned.iter().any(|w| w.what.starts_with("nft is missing")
            && w.fix.as_deref() == Some("apt-get install -y nftables")));
        assert!(warned.iter().any(|w| w.fix.as_deref().is_some_and(|x| x.contains("br_netfilter"))));
        assert!(warned.iter().any(|w| w.fix.as_deref().is_some_and(|x| x.contains("net.ipv4.ip_forward=1"))));
    }

    fn fails(f: &[Finding]) -> Vec<&Finding> {
        f.iter().filter(|f| f.level == Level::Fail).collect()
    }

    #[test]
    fn a_healthy_host_passes() {
        let f = assess(&healthy());
        assert!(f.iter().all(|f| f.level == Level::Ok), "{f:#?}");
        assert!(f.iter().any(|f| f.what.contains("hybrid")));
    }

    #[test]
    fn raspberry_pi_os_without_the_memory_cgroup_is_told_how_to_enable_it() {
        let mut host = healthy();
        host.cgroups = Some(PI_CGROUPS.into());
        host.boot_cmdline = Some("/boot/firmware/cmdline.txt".into());
        let f = assess(&host);
        let [fail] = fails(&f)[..] else { panic!("{f:#?}") };
        assert!(fail.what.contains("memory cgroup controller is disabled"), "{fail:?}");
        assert_eq!(
            fail.fix.as_deref(),
            Some("add `cgroup_enable=memory cgroup_memory=1` to /boot/firmware/cmdline.txt and reboot")
        );
    }

    #[test]
    fn a_v2_host_reads_its_root_controllers() {
        let mut host = healthy();
        host.mounts = Some(V2_MOUNTS.into());
        host.cgroups = None;
        host.v2_controllers = Some("cpuset cpu io memory hugetlb pids rdma misc\n".into());
        assert!(fails(&assess(&host)).is_empty());
        host.v2_controllers = Some("cpuset cpu io pids\n".into());
        let f = assess(&host);
        assert!(fails(&f)[0].what.contains("memory"), "{f:#?}");
        assert!(fails(&f)[0].fix.as_deref().unwrap().contains("update-grub"), "no boot partition: GRUB");
    }

    #[test]
    fn missing_overlay_namespaces_root_and_cgroups_fail_with_a_fix_each() {
        let mut host = healthy();
        host.filesystems = Some("nodev\ttmpfs\n".into());
        host.namespaces.retain(|n| n != "net" && n != "user");
        host.euid = 1000;
        host.seccomp = false;
        host.mounts = Some("/dev/sda1 / ext4 rw 0 0\n".into());
        let f = assess(&host);
        let failed: Vec<&str> = fails(&f).iter().map(|f| f.what.as_str()).collect();
        assert_eq!(failed.len(), 4, "{failed:#?}");
        assert!(failed.iter().any(|w| w.contains("overlayfs")));
        assert!(failed.iter().any(|w| w.contains("namespaces missing: net")));
        assert!(failed.iter().any(|w| w.contains("uid 1000")));
        assert!(failed.iter().any(|w| w.contains("no cgroup file system")));
        assert!(f.iter().all(|f| f.level == Level::Ok || f.fix.is_some()), "every problem has a fix");
        let warned: Vec<&str> =
            f.iter().filter(|f| f.level == Level::Warn).map(|f| f.what.as_str()).collect();
        assert!(
            warned.iter().any(|w| w.contains("user namespaces"))
                && warned.iter().any(|w| w.contains("seccomp"))
        );
    }

    #[test]
    fn agent_directories_are_checked_when_a_config_is_given() {
        let mut host = healthy();
        host.state_dir = Some(DirFacts {
            path: "/var/lib/flotilla-agent".into(),
            free: Some(100 << 20),
            fs_type: Some("ext4".into()),
        });
        host.runtime_dir =
            Some(DirFacts { path: "/var/lib/run".into(), free: Some(1 << 30), fs_type: Some("ext4".into()) });
        let f = assess(&host);
        let warned: Vec<&Finding> = f.iter().filter(|f| f.level == Level::Warn).collect();
        assert_eq!(warned.len(), 2, "{f:#?}");
        assert!(warned[0].what.contains("100 MiB free"));
        assert!(warned[1].what.contains("not tmpfs"));
    }
}
