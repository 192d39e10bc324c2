//! A throwaway guest with a pure cgroup v2 hierarchy, for the tests that must see
//! what a v2 device sees (Raspberry Pi OS since bookworm, every systemd distribution
//! of the last years) on a test host whose controllers are bound to cgroup v1.
//!
//! Why a guest and not a v2 mount on this host: a controller can be in the v2
//! hierarchy only while no v1 hierarchy binds it, and a v1 hierarchy lets go of its
//! controllers only once it has no child cgroups left. On the CI host the v1 memory
//! hierarchy holds the cgroups of the machine's own process supervisor (with live
//! processes, the test runner among them), and the others hold the cgroups of test
//! runs in other work trees; moving a controller would mean deleting cgroups the test
//! did not create. A guest kernel has its own cgroups: nothing on the host changes.
//!
//! The guest boots Debian's own kernel (`linux-image-amd64`) under QEMU
//! (`qemu-system-x86`) with a small initramfs made here: busybox, the modules for
//! 9p and overlayfs, and an `/init` that mounts the host's root file system read-only
//! over virtio-9p, mounts cgroup2 at `/sys/fs/cgroup` (and no v1 hierarchy) and a
//! tmpfs on `/run`, then runs one shell command in it, in the caller's working
//! directory, with `TMPDIR=/run/tmp`. The workspace's binaries and test binaries
//! therefore run in the guest from where cargo built them (even in a clone under
//! `/tmp`, which stays the host's, read-only). Everything the guest writes is in its
//! memory and goes with it.
//!
//! Acceleration is TCG (emulation) by default: KVM inside the CI machine (itself a
//! virtual machine) accepts a guest and then never gets it past the kernel's first
//! lines. `FLOTILLA_GUEST_ACCEL=kvm` uses KVM where it works.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What the guest's console says when the command ended, followed by its exit code.
const EXIT_MARK: &str = "flotilla-guest-exit=";
/// What `/init` says when it cannot set the guest up.
const INIT_FAILED_MARK: &str = "flotilla-guest-init-failed:";

/// Modules the guest needs before (9p, virtio) and after (overlayfs, entropy) its
/// root is mounted; their dependencies are found in `modules.dep`.
const GUEST_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio-rng"];

/// The kernel and its modules, as installed by `linux-image-amd64`.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub image: PathBuf,
    pub release: String,
}

impl GuestKernel {
    /// The newest `/boot/vmlinuz-<release>` whose modules are installed.
    pub fn find() -> Result<GuestKernel, String> {
        let mut found: Vec<GuestKernel> = std::fs::read_dir("/boot")
            .map_err(|e| format!("reading /boot: {e}"))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let release = name.strip_prefix("vmlinuz-")?.to_string();
                Path::new("/lib/modules")
                    .join(&release)
                    .join("modules.dep")
                    .exists()
                    .then(|| GuestKernel { image: e.path(), release })
            })
            .collect();
        found.sort_by_key(|k| version_key(&k.release));
        found.pop().ok_or_else(|| {
            "no guest kernel: /boot/vmlinuz-* with its /lib/modules is missing; \
             install it with `apt-get install -y linux-image-amd64` (cargo xtask test does)"
                .to_string()
        })
    }

    fn modules_dir(&self) -> PathBuf {
        Path::new("/lib/modules").join(&self.release)
    }
}

/// A release string's numbers, for picking the newest (`6.1.0-57-amd64` → 6, 1, 0, 57).
fn version_key(release: &str) -> Vec<u64> {
    release.split(['.', '-']).filter_map(|n| n.parse().ok()).collect()
}

/// Module name of a `modules.dep` path: `kernel/fs/9p/9p.ko` → `9p`; `-` and `_`
/// are the same to the kernel.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The module files to load, dependencies first, for `wanted` (names), from the text
/// of a `modules.dep`. A name the file does not list is an error: the module would
/// be missing in the guest, or built in (then leave it out of `wanted`).
pub fn load_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>, String> {
    let mut deps: std::collections::HashMap<String, (String, Vec<String>)> = Default::default();
    for line in modules_dep.lines() {
        let Some((module, rest)) = line.split_once(':') else { continue };
        let needs = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(module), (module.to_string(), needs));
    }
    fn visit(
        name: &str,
        deps: &std::collections::HashMap<String, (String, Vec<String>)>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), String> {
        if done.contains(name) {
            return Ok(());
        }
        let (path, needs) = deps.get(name).ok_or_else(|| format!("module {name} is not in modules.dep"))?;
        done.insert(name.to_string());
        for need in needs {
            visit(&module_name(need), deps, done, out)?;
        }
        out.push(path.clone());
        Ok(())
    }
    let (mut done, mut out) = (BTreeSet::new(), Vec::new());
    for name in wanted {
        visit(&name.replace('-', "_"), &deps, &mut done, &mut out)?;
    }
    Ok(out)
}

/// One entry of a `newc` cpio archive (what the kernel unpacks as an initramfs).
pub enum CpioEntry<'a> {
    Dir(&'a str),
    File { path: &'a str, mode: u32, data: Vec<u8> },
}

/// A `newc` cpio archive of `entries`, with the trailer.
pub fn cpio_newc(entries: &[CpioEntry<'_>]) -> Vec<u8> {
    fn header(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, nlink: u32, data: &[u8]) {
        let fields = [ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    for (idx, e) in entries.iter().enumerate() {
        let ino = idx as u32 + 1;
        match e {
            CpioEntry::Dir(path) => header(&mut out, ino, path, 0o040_755, 2, &[]),
            CpioEntry::File { path, mode, data } => header(&mut out, ino, path, 0o100_000 | mode, 1, data),
        }
    }
    header(&mut out, 0, "TRAILER!!!", 0, 1, &[]);
    out
}

/// The guest's `/init`: modules, the host's root over 9p, cgroup2 and the scratch
/// file systems, loopback up, then `/stage2` as a shell command in the new root.
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
fail() { echo "flotilla-guest-init-failed: $*"; $B poweroff -f; }
$B mkdir -p /proc /dev /newroot
$B mount -t proc proc /proc || fail proc
$B mount -t devtmpfs dev /dev || fail devtmpfs
for m in $($B cat /modules/order); do $B insmod "/modules/$m" || fail "insmod $m"; done
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /newroot || fail "9p root"
cd /newroot || fail "no root"
$B mount -t sysfs sys sys || fail sysfs
$B mount -t cgroup2 cgroup2 sys/fs/cgroup || fail cgroup2
$B mount -t proc proc proc || fail "root proc"
$B mount --move /dev dev || fail "move dev"
$B mkdir -p dev/pts dev/shm
$B mount -t devpts -o newinstance,ptmxmode=0666 devpts dev/pts || fail devpts
$B mount -t tmpfs shm dev/shm || fail shm
$B mount -t tmpfs run run || fail run
$B mkdir -m 1777 run/tmp || fail "run/tmp"
$B ip link set lo up || fail loopback
$B hostname flotilla-guest || fail hostname
STAGE2="$($B cat /stage2)"
exec $B switch_root /newroot /bin/sh -c "$STAGE2"
"#;

/// How a guest run ended.
#[derive(Debug)]
pub struct GuestRun {
    /// The command's exit code, `None` when the guest never said (it crashed, or
    /// `/init` failed: see `console`).
    pub exit_code: Option<i32>,
    /// Everything the guest wrote to its serial console.
    pub console: String,
}

impl GuestRun {
    /// The console's last `n` lines.
    pub fn console_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// QEMU, killed when dropped.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots a guest, runs `command` in it with `env` (and nothing else) as its
/// environment, and returns when the guest powered off, or after `timeout`.
/// `dir` holds the initramfs and the console log. Panics with a clear message when
/// the host lacks QEMU or a guest kernel.
pub fn run_in_guest(dir: &Path, command: &str, env: &[(&str, String)], timeout: Duration) -> GuestRun {
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    assert!(
        qemu.exists(),
        "{} is missing: install it with `apt-get install -y qemu-system-x86` (cargo xtask test does)",
        qemu.display()
    );
    let kernel = GuestKernel::find().unwrap_or_else(|e| panic!("{e}"));
    let initramfs = dir.join("guest-initramfs.cpio");
    write_initramfs(&kernel, command, env, &initramfs);
    let console = dir.join("guest-console.log");
    let accel = match std::env::var("FLOTILLA_GUEST_ACCEL").as_deref() {
        Ok("kvm") => "kvm".to_string(),
        _ => "tcg,thread=multi".to_string(),
    };
    let cpu = if accel == "kvm" { "host" } else { "max" };
    let child = Command::new(qemu)
        .args(["-accel", &accel, "-cpu", cpu, "-smp", "2", "-m", "2048"])
        .args(["-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4 random.trust_cpu=on"])
        .args(["-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"])
        .args(["-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"])
        .args(["-device", "virtio-rng-pci"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-system-x86_64");
    let mut qemu = Qemu(child);
    let end = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = qemu.0.try_wait().expect("waiting for qemu") {
            break Some(status);
        }
        if std::time::Instant::now() >= end {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
    let run = GuestRun { exit_code: parse_exit_code(&text), console: text };
    match status {
        None => panic!("the guest did not power off within {timeout:?}; console:\n{}", run.console_tail(60)),
        Some(s) if run.exit_code.is_none() => {
            let mut stderr = String::new();
            if let Some(mut e) = qemu.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            let init = run.console.lines().find(|l| l.contains(INIT_FAILED_MARK)).unwrap_or("");
            panic!(
                "the guest ended ({s}) without its command's exit code {init}\nqemu: {stderr}\nconsole:\n{}",
                run.console_tail(60)
            )
        }
        Some(_) => run,
    }
}

/// The exit code the guest's stage 2 printed last.
fn parse_exit_code(console: &str) -> Option<i32> {
    console
        .lines()
        .filter_map(|l| l.split(EXIT_MARK).nth(1))
        .filter_map(|c| c.trim().parse().ok())
        .next_back()
}

fn write_initramfs(kernel: &GuestKernel, command: &str, env: &[(&str, String)], out: &Path) {
    let modules_dir = kernel.modules_dir();
    let dep = std::fs::read_to_string(modules_dir.join("modules.dep")).expect("reading modules.dep");
    let order =
        load_order(&dep, GUEST_MODULES).unwrap_or_else(|e| panic!("guest kernel {}: {e}", kernel.release));
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (static) is missing: apt-get install -y busybox-static");
    let cwd = std::env::current_dir().expect("the working directory");
    let mut stage2 = format!("cd {}\nexport TMPDIR=/run/tmp\n", shell_quote(&cwd.to_string_lossy()));
    for (k, v) in env {
        stage2.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    stage2.push_str(&format!("{command}\necho \"{EXIT_MARK}$?\"\necho o > /proc/sysrq-trigger\nsleep 60\n"));
    let names: Vec<String> = order.iter().map(|p| format!("modules/{}", module_name(p))).collect();
    let mut entries = vec![
        CpioEntry::Dir("bin"),
        CpioEntry::Dir("modules"),
        CpioEntry::File { path: "bin/busybox", mode: 0o755, data: busybox },
        CpioEntry::File { path: "init", mode: 0o755, data: INIT.as_bytes().to_vec() },
        CpioEntry::File { path: "stage2", mode: 0o644, data: stage2.into_bytes() },
    ];
    let mut list = String::new();
    for (path, name) in order.iter().zip(&names) {
        let data = std::fs::read(modules_dir.join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        entries.push(CpioEntry::File { path: name, mode: 0o644, data });
        list.push_str(name.trim_start_matches("modules/"));
        list.push('\n');
    }
    entries.push(CpioEntry::File { path: "modules/order", mode: 0o644, data: list.into_bytes() });
    let mut f = std::fs::File::create(out).expect("creating the initramfs");
    f.write_all(&cpio_newc(&entries)).expect("writing the initramfs");
}

/// `s` in single quotes for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/overlayfs/overlay.ko:
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn modules_load_after_their_dependencies_and_once() {
        let order = load_order(DEP, &["9pnet_virtio", "9p", "virtio_rng"]).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            ["9pnet", "virtio", "virtio_ring", "9pnet_virtio", "netfs", "fscache", "9p", "virtio_rng"]
        );
        assert!(load_order(DEP, &["vfat"]).unwrap_err().contains("vfat"));
    }

    #[test]
    fn newc_headers_are_aligned_and_end_with_the_trailer() {
        let a = cpio_newc(&[CpioEntry::File { path: "init", mode: 0o755, data: b"#!x".to_vec() }]);
        assert_eq!(&a[..6], b"070701");
        // mode, then the size field (7th) and the name size (12th, with its NUL).
        assert_eq!(&a[14..22], b"000081ED");
        assert_eq!(&a[54..62], b"00000003");
        assert_eq!(&a[94..102], b"00000005");
        // 110-byte header + "init\0" padded to 116, data padded to 120.
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..119], b"#!x");
        assert_eq!(a.len() % 4, 0);
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn the_last_exit_mark_counts() {
        assert_eq!(parse_exit_code("boot\nflotilla-guest-exit=1\nflotilla-guest-exit=0\n"), Some(0));
        assert_eq!(parse_exit_code("[ 1.0] flotilla-guest-exit=101\r\n"), Some(101));
        assert_eq!(parse_exit_code("kernel panic"), None);
        assert_eq!(version_key("6.1.0-57-amd64"), [6, 1, 0, 57]);
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
