//! The device-side commands behind isolated networking: links, addresses and routes
//! through the `ip` binary (iproute2), the ruleset through `nft -f -`, and sysctls.
//!
//! Why binaries and not netlink: the static agent is over its 8 MiB goal, and a
//! netlink crate (rtnetlink, neli) or nftables bindings would add to it for a handful
//! of calls made when a pod is created or the set of apps changes. `ip` and `nft`
//! ship with every distribution the agent targets (Docker, Podman's netavark and
//! Kubernetes' kube-proxy shell out to `nft` the same way), and `flotilla-agent check`
//! names what is missing. Commands run from a short-lived thread of their own; inside
//! a pod, that thread first joins the pod's network namespace, which the child
//! inherits.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null());
    }
    let mut child = cmd.spawn().map_err(|e| {
        let package = if program == "nft" { "nftables" } else { "iproute2" };
        format!("running {program}: {e} (isolated networking needs it: apt-get install -y {package})")
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| format!("writing to {program}: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("waiting for {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args, None)
}

/// Whether the calling thread's network namespace has a link `name` (asked of the
/// kernel, not of `/sys/class/net`, which shows the namespace sysfs was mounted in).
pub fn link_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// Writes a sysctl under `/proc/sys` unless it already holds `value`.
pub fn sysctl(key: &str, value: &str) -> Result<(), String> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| format!("setting {key} = {value}: {e}"))
}

/// The bridge, up, with the gateway address; forwarding on, bridged IPv4 through
/// netfilter (policies between pods), and loopback sources routable to the bridge
/// (published ports reached at 127.0.0.1). Idempotent.
pub fn ensure_bridge(bridge: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), String> {
    if !link_exists(bridge) {
        ip(&["link", "add", bridge, "type", "bridge"])?;
    }
    ip(&["addr", "replace", &format!("{gateway}/{prefix}"), "dev", bridge])?;
    ip(&["link", "set", bridge, "up"])?;
    sysctl("net.ipv4.ip_forward", "1")?;
    sysctl(&format!("net.ipv4.conf.{bridge}.route_localnet"), "1")?;
    sysctl("net.bridge.bridge-nf-call-iptables", "1")
        .map_err(|e| format!("{e} (the kernel needs bridge netfilter: modprobe br_netfilter)"))?;
    Ok(())
}

/// Gives the pod at `netns` an `eth0` on the bridge, through a veth pair whose host
/// end is `host_if`: address `address/prefix`, default route via `gateway`. What a
/// failed earlier attempt left is replaced.
pub fn attach(
    bridge: &str,
    host_if: &str,
    netns: &Path,
    address: Ipv4Addr,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<(), String> {
    detach(host_if)?;
    let ns = netns.to_str().ok_or("the pod's path is not UTF-8")?;
    // The peer is made inside the pod's namespace (iproute2 takes a path there).
    ip(&["link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
    ip(&["link", "set", host_if, "master", bridge])?;
    ip(&["link", "set", host_if, "up"])?;
    let ns_file = std::fs::File::open(netns).map_err(|e| format!("opening {}: {e}", netns.display()))?;
    let cidr = format!("{address}/{prefix}");
    let gw = gateway.to_string();
    std::thread::spawn(move || -> Result<(), String> {
        // This thread alone moves into the pod, and ends right after.
        nix::sched::setns(ns_file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering the pod's network namespace: {e}"))?;
        ip(&["addr", "replace", &cidr, "dev", "eth0"])?;
        ip(&["link", "set", "eth0", "up"])?;
        ip(&["route", "replace", "default", "via", &gw, "dev", "eth0"])?;
        Ok(())
    })
    .join()
    .map_err(|_| "the network thread panicked".to_string())?
}

/// Removes the veth pair (both ends go); nothing to do when it is gone.
pub fn detach(host_if: &str) -> Result<(), String> {
    if link_exists(host_if) {
        ip(&["link", "del", host_if])?;
    }
    Ok(())
}

/// Applies an nftables script in one transaction.
pub fn nft_apply(script: &str) -> Result<(), String> {
    run("nft", &["-f", "-"], Some(script)).map(drop)
}

/// Removes our nftables table and the bridge (`flotilla-agent reset`). What is
/// already gone, or a host without `nft` that never had the table, is fine.
pub fn remove_all(cfg: &super::NetConfig) -> Result<(), String> {
    let t = &cfg.table;
    let has_table = run("nft", &["list", "table", "inet", t], None).is_ok();
    if has_table {
        nft_apply(&format!("delete table inet {t}\n"))?;
    }
    if link_exists(&cfg.bridge) {
        ip(&["link", "del", &cfg.bridge])?;
    }
    Ok(())
}
