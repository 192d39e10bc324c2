//! User namespaces for apps that ask for one (`userNamespace: true`): which ids of the
//! device an app's containers run as, and the small process that gives a pod its user
//! namespace.
//!
//! Every such app gets [`ID_RANGE_LEN`] ids of its own: container uid 0 is
//! `host_first` on the device, uid 65535 is `host_first + 65535`. The range is a pure
//! function of the app's name ([`range_for`]): the same after a restart, a reboot or a
//! new agent, so files the app wrote to its persistent volumes stay its own, without a
//! record to keep. Ranges start at 2^30, far above any id a distribution hands out,
//! and there are [`SLOTS`] of them; two apps on one device share a range only if their
//! names hash alike (with 20 such apps on a device, about 1 % of devices would hold
//! one such pair), and then they are no worse off than apps sharing one range for the
//! whole device, as Docker's `userns-remap` does.
//!
//! The app's root is an unprivileged id on the device, so it must be let through the
//! directories on the way to what its containers use (their roots, the pod's files,
//! persistent volumes, Config and Secret files) — and no further. The agent's state and
//! runtime directories and the parents of per-app and per-container directories are
//! [`PASS_THROUGH_MODE`] (search only, as Docker's 0701 root: a name must be known, and
//! the agent keeps its own entries private); each per-app or per-container directory is
//! [`restrict_dir`]ed to the device's root and that one app's root group.

use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

/// Ids per app: a whole 16-bit id space, as Kubernetes gives each pod.
pub const ID_RANGE_LEN: u32 = 65536;
/// The first id of the first range.
pub const FIRST_HOST_ID: u32 = 1 << 30;
/// How many ranges there are (up to `FIRST_HOST_ID + SLOTS * ID_RANGE_LEN` = 2^31).
pub const SLOTS: u32 = 16384;

/// What `/proc/<pid>/uid_map` (and `gid_map`) of an app's pod says: container ids
/// `0..len` are `host_first..host_first + len` on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub host_first: u32,
    pub len: u32,
}

impl IdRange {
    /// The line for `uid_map` and `gid_map`.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_first, self.len)
    }

    /// Whether a container id falls in the range (can be used inside).
    pub fn maps(&self, container_id: u32) -> bool {
        container_id < self.len
    }
}

/// App `app`'s range: FNV-1a of its name picks the slot.
pub fn range_for(app: &str) -> IdRange {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in app.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let slot = (h % u64::from(SLOTS)) as u32;
    IdRange { host_first: FIRST_HOST_ID + slot * ID_RANGE_LEN, len: ID_RANGE_LEN }
}

/// Mode of a directory every app's root passes through: others may search it, not list it.
pub const PASS_THROUGH_MODE: u32 = 0o701;

/// Gives the existing `dir` mode `mode` (owner and group untouched).
pub fn set_mode(dir: &Path, mode: u32) -> io::Result<()> {
    if std::fs::metadata(dir)?.mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Makes the existing `dir` reachable by the device's root and, with `app_root` (the
/// first id of an app's range), by that app's root through its group: `root:root 0700`
/// or `root:<app_root> 0710`. Idempotent; turning the option off takes the access back.
pub fn restrict_dir(dir: &Path, app_root: Option<u32>) -> io::Result<()> {
    let gid = app_root.unwrap_or(0);
    let mode = if app_root.is_some() { 0o710 } else { 0o700 };
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != 0 || meta.gid() != gid {
        nix::unistd::chown(dir, Some(nix::unistd::Uid::from_raw(0)), Some(nix::unistd::Gid::from_raw(gid)))?;
    }
    set_mode(dir, mode)
}

/// The argument that makes the agent binary a pod holder ([`pod_holder_main`]).
pub const POD_HOLDER_SUBCOMMAND: &str = "pod-holder";

/// A pod holder's whole life: started by [`crate::pod::create_pod`] already inside the
/// pod's new user, network and IPC namespaces, it waits while the agent maps its ids
/// and binds the namespaces to files, and ends when the agent closes its stdin (or
/// dies). It holds nothing afterwards: the bind mounts do.
pub fn pod_holder_main() -> ExitCode {
    let mut sink = [0u8; 64];
    let mut stdin = io::stdin();
    loop {
        match stdin.read(&mut sink) {
            Ok(0) | Err(_) => return ExitCode::SUCCESS,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_stable_disjoint_and_high() {
        let web = range_for("web");
        assert_eq!(web, range_for("web"), "a pure function of the name");
        assert_eq!(web.len, 65536);
        assert_eq!((web.host_first - FIRST_HOST_ID) % ID_RANGE_LEN, 0, "aligned to a slot");
        assert!(web.host_first >= 1 << 30);
        assert!(u64::from(web.host_first) + u64::from(web.len) <= 1 << 31, "below 2^31");
        assert_eq!(web.map_line(), format!("0 {} 65536\n", web.host_first));
        assert!(web.maps(0) && web.maps(65535) && !web.maps(65536));
        // Ranges never overlap: different slots are 65536 apart.
        let names: Vec<String> = (0..200).map(|i| format!("app-{i}")).collect();
        let mut firsts: Vec<u32> = names.iter().map(|n| range_for(n).host_first).collect();
        firsts.sort();
        firsts.dedup();
        assert!(firsts.len() >= 198, "200 names land in nearly 200 slots: {}", firsts.len());
        assert!(firsts.windows(2).all(|w| w[1] - w[0] >= ID_RANGE_LEN));
    }
}
