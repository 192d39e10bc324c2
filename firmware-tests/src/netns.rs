//! Network namespaces for whole-system tests: a hub or an agent gets its own network
//! stack, joined to the root namespace by a veth pair, so a test can put a faulty
//! link (see [`crate::link`]) between them. Everything is made with `ip` (iproute2)
//! and removed on drop; namespaces left by killed runs are removed by the next run.
//!
//! Addresses are `10.<N>.<subnet_idx>.2` inside and `.1` on the root side, on a /24,
//! with `N` in 200..=250 picked under a lock file so that tests running at the same
//! time, in threads or in other processes, never get overlapping subnets.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Every name this module makes starts with this, so stale ones can be found.
const NS_PREFIX: &str = "flt-";
/// Root-side and namespace-side veth names: `fr<pid hex>x<n hex>`, `fn<pid hex>x<n hex>`
/// (at most 15 bytes, the kernel's limit; `x` is not a hex digit, so it splits them).
const VETH_ROOT: &str = "fr";
const VETH_NS: &str = "fn";
/// Serialises subnet choice and address assignment between test processes.
const LOCK_FILE: &str = "/run/flotilla-tests-netns.lock";
const SECOND_OCTETS: std::ops::RangeInclusive<u8> = 200..=250;

static N_NAMESPACES: AtomicU32 = AtomicU32::new(0);
static N_LINKS: AtomicU32 = AtomicU32::new(0);
static CLEANUP: std::sync::Once = std::sync::Once::new();

/// Runs `ip ARGS`; stdout, or stderr as the error.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        format!("running ip {}: {e} (install iproute2: apt-get install -y iproute2)", args.join(" "))
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip_ok(args: &[&str]) -> String {
    ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The two ends of a veth pair between a namespace and the root namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsLink {
    /// The address inside the namespace (`10.N.idx.2`).
    pub ns_ip: Ipv4Addr,
    /// The address on the root side (`10.N.idx.1`); the namespace's default route.
    pub root_ip: Ipv4Addr,
    /// Interface names, for tests that take a link down (`ip link set … down`).
    pub root_if: String,
    pub ns_if: String,
}

/// A network namespace, deleted (with the veths made for it) when the last clone
/// is dropped; a [`crate::Hub`] or [`crate::Agent`] started in it holds a clone, so
/// the namespace outlives its process. Processes a test starts itself with
/// [`Netns::command`] are the test's to stop.
#[derive(Debug, Clone)]
pub struct Netns {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    root_ifs: Mutex<Vec<String>>,
}

impl Netns {
    /// Creates `flt-<prefix>-<pid>-<n>` with `lo` up. `prefix` is a few ASCII
    /// letters or digits naming the test's role for it (`hub`, `edge`).
    pub fn create(prefix: &str) -> Netns {
        assert!(
            !prefix.is_empty() && prefix.len() <= 16 && prefix.bytes().all(|b| b.is_ascii_alphanumeric()),
            "netns prefix {prefix:?}: use 1 to 16 ASCII letters or digits"
        );
        CLEANUP.call_once(cleanup_stale);
        let n = N_NAMESPACES.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NS_PREFIX}{prefix}-{}-{n}", std::process::id());
        ip_ok(&["netns", "add", &name]);
        let ns = Netns { inner: Arc::new(Inner { name, root_ifs: Mutex::new(Vec::new()) }) };
        ns.run(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The namespace's file, which `setns(2)` takes.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name())
    }

    /// Joins the namespace to the root namespace with a veth pair on a fresh /24:
    /// `10.N.subnet_idx.2` inside, `.1` outside. The first link also becomes the
    /// namespace's default route. `subnet_idx` lets one test give its namespaces
    /// recognisable subnets; clashes with other tests are avoided through `N`.
    pub fn link_to_root(&self, subnet_idx: u8) -> NsLink {
        let pid = std::process::id();
        let n = N_LINKS.fetch_add(1, Ordering::Relaxed);
        let root_if = format!("{VETH_ROOT}{pid:x}x{n:x}");
        let ns_if = format!("{VETH_NS}{pid:x}x{n:x}");
        assert!(root_if.len() <= 15, "veth name {root_if} is too long");

        let lock = lock_subnets();
        let second = free_second_octet(subnet_idx, pid.wrapping_add(n));
        let root_ip = Ipv4Addr::new(10, second, subnet_idx, 1);
        let ns_ip = Ipv4Addr::new(10, second, subnet_idx, 2);
        ip_ok(&["link", "add", &root_if, "type", "veth", "peer", "name", &ns_if, "netns", self.name()]);
        self.inner.root_ifs.lock().expect("netns lock").push(root_if.clone());
        ip_ok(&["addr", "add", &format!("{root_ip}/24"), "dev", &root_if]);
        // Once the root side holds the address, other processes see the subnet taken.
        drop(lock);
        ip_ok(&["link", "set", &root_if, "up"]);
        self.run(&["addr", "add", &format!("{ns_ip}/24"), "dev", &ns_if]);
        self.run(&["link", "set", &ns_if, "up"]);
        if !self.run(&["-4", "route", "show", "default"]).contains("default") {
            self.run(&["route", "add", "default", "via", &root_ip.to_string()]);
        }
        NsLink { ns_ip, root_ip, root_if, ns_if }
    }

    /// A command that runs `program` in this namespace. Unlike `ip netns exec` it
    /// switches only the network namespace: `ip netns exec` also remounts `/sys`,
    /// which hides the cgroup mounts the agent's containers need.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        use std::os::unix::process::CommandExt;
        let path = self.path();
        let ns_file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs in the forked child before exec and only makes
        // one system call (setns) on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        cmd
    }

    /// Runs `ip ARGS` inside the namespace (`ip -n NAME ARGS`), e.g.
    /// `ns.run(&["addr", "add", "10.9.9.9/32", "dev", "lo"])`; its stdout.
    /// Panics with `ip`'s message if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Netns::run`] returning `ip`'s message instead of panicking.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", self.name()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a new thread inside this namespace: sockets it opens (a tokio
    /// runtime it builds, too) belong to the namespace. Handy for test clients.
    pub fn spawn<T, F>(&self, f: F) -> std::thread::JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = self.path();
        let ns_file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        std::thread::Builder::new()
            .name(format!("in-{}", self.name()))
            .spawn(move || {
                nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("entering {path}: {e}"));
                drop(ns_file);
                f()
            })
            .expect("spawning a thread")
    }

    /// Pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        ip(&["netns", "pids", self.name()])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Deleting the root end removes the pair now, even if a process the test
        // forgot keeps the namespace alive.
        for root_if in self.root_ifs.lock().map(|v| v.clone()).unwrap_or_default() {
            if let Err(e) = ip(&["link", "del", &root_if]) {
                eprintln!("netns {}: {e}", self.name);
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("{e}");
        }
    }
}

/// An exclusive lock over subnet choice, held until dropped.
fn lock_subnets() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("opening {LOCK_FILE}: {e}"));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking {LOCK_FILE}: {e}"))
}

/// IPv4 networks (`addr/len`) the root namespace has addresses or routes in.
fn root_networks() -> Vec<(Ipv4Addr, u8)> {
    let text = format!("{}\n{}", ip_ok(&["-o", "-4", "addr", "show"]), ip_ok(&["-4", "route", "show"]));
    text.split_whitespace()
        .filter_map(|tok| {
            let (addr, len) = tok.split_once('/').unwrap_or((tok, "32"));
            Some((addr.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?))
        })
        .collect()
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// A second octet `N` such that `10.N.subnet_idx.0/24` is in no address or route of
/// the root namespace. Call with the lock held. `start` spreads the search.
fn free_second_octet(subnet_idx: u8, start: u32) -> u8 {
    let taken = root_networks();
    let span = u32::from(SECOND_OCTETS.end() - SECOND_OCTETS.start()) + 1;
    (0..span)
        .map(|i| SECOND_OCTETS.start() + ((start + i) % span) as u8)
        .find(|&second| {
            let candidate = (Ipv4Addr::new(10, second, subnet_idx, 0), 24);
            !taken.iter().any(|&net| overlaps(candidate, net))
        })
        .unwrap_or_else(|| {
            panic!("no free 10.{{200..250}}.{subnet_idx}.0/24 subnet: stale namespaces? see `ip netns list`")
        })
}

/// Deletes namespaces and root-side veths this module made in processes that are
/// gone (a test run killed before its drops ran). Runs once per process by itself.
pub fn cleanup_stale() {
    let dead = |pid: Option<i32>| pid.is_some_and(|p| p > 0 && !crate::pid_alive(p));
    for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(NS_PREFIX) else { continue };
        // flt-<prefix>-<pid>-<n>
        let pid = rest.rsplit('-').nth(1).and_then(|p| p.parse().ok());
        if dead(pid) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    for line in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
        // "12: frabcx1@if11: <...>"
        let Some(name) = line.split_whitespace().nth(1) else { continue };
        let name = name.trim_end_matches(':').split('@').next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(VETH_ROOT) else { continue };
        let pid = rest.split_once('x').and_then(|(p, _)| i32::from_str_radix(p, 16).ok());
        if dead(pid) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_networks() {
        let net = |s: &str, l| (s.parse::<Ipv4Addr>().unwrap(), l);
        assert!(overlaps(net("10.200.3.0", 24), net("10.200.3.1", 32)));
        assert!(overlaps(net("10.200.3.0", 24), net("10.0.0.0", 8)));
        assert!(!overlaps(net("10.200.3.0", 24), net("10.200.4.1", 24)));
        assert!(!overlaps(net("10.200.3.0", 24), net("192.0.2.0", 24)));
        assert!(overlaps(net("10.200.3.0", 24), net("0.0.0.0", 0)));
    }
}
