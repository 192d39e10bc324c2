//! What the agent learns about its device: architecture, capacity, host name, boot id.

use shared_proto::wire::DeviceFacts;
use shared_proto::{Bytes, Capacity, CpuMillis};

/// The OCI name of this build's architecture.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

/// Changes on every boot; lets the hub tell a reboot from a reconnect.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn device_facts() -> DeviceFacts {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    DeviceFacts {
        arch: oci_arch().to_string(),
        os: std::env::consts::OS.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        capacity: Capacity { cpu: CpuMillis(cpus * 1000), memory: Bytes(mem_total()) },
        hostname: hostname(),
    }
}
