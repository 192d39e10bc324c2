//! `flotilla-agent check` as a user runs it: on this host (which runs the whole
//! suite's containers, so must pass), and on a Raspberry Pi OS host as shipped, given
//! as a fixture of its `/proc` and `/sys`, where the memory cgroup is disabled.

use std::path::Path;
use std::process::Command;

fn check(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla-agent")).arg("check").args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn this_host_can_run_the_agent() {
    if !nix::unistd::geteuid().is_root() {
        // The suite runs as root (cargo xtask test refuses otherwise); running as
        // another user is itself a finding, checked below.
        let (code, out) = check(&[]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("run the agent as root"), "{out}");
        return;
    }
    let (code, out) = check(&[]);
    assert_eq!(code, Some(0), "{out}");
    for line in ["ok    running as root", "ok    overlayfs", "ok    namespaces: mnt, pid, net, ipc, uts"] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    assert!(out.contains("cgroup controllers: cpu, memory, pids"), "{out}");
}

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn a_raspberry_pi_without_the_memory_cgroup_is_told_the_fix() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write(r, "proc/self/mounts", "/dev/mmcblk0p2 / ext4 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n");
    // Bookworm on a Pi 4: cgroup v2, memory compiled in but left out of the root's controllers.
    write(r, "sys/fs/cgroup/cgroup.controllers", "cpuset cpu io pids\n");
    write(r, "proc/cgroups", "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t0\t80\t0\n");
    write(r, "proc/filesystems", "nodev\ttmpfs\nnodev\toverlay\n");
    write(r, "proc/self/status", "Name:\tflotilla-agent\nSeccomp:\t0\n");
    write(r, "proc/sys/user/max_user_namespaces", "15000\n");
    for ns in ["ipc", "mnt", "net", "pid", "user", "uts"] {
        write(r, &format!("proc/self/ns/{ns}"), "");
    }
    write(r, "boot/firmware/cmdline.txt", "console=serial0,115200 root=PARTUUID=1 rootwait\n");
    let (code, out) = check(&["--root", r.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  the memory cgroup controller is disabled"), "{out}");
    assert!(
        out.contains(
            "fix: add `cgroup_enable=memory cgroup_memory=1` to /boot/firmware/cmdline.txt and reboot"
        ),
        "{out}"
    );
    assert!(out.contains("ok    cgroups: v2 (unified)"), "{out}");
    assert!(out.contains("1 problem(s) to fix"), "{out}");
}
