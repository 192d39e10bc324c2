//! Which capabilities a container gets: Docker's default set adjusted by the container's
//! adds and drops, or everything for `privileged` — always within what the agent itself
//! holds, because a process cannot grant a capability it lacks (libcontainer's `capset`
//! fails with EPERM and the create with a bare "failed syscall").
//!
//! A device may hold fewer than the kernel knows: an agent started by systemd with a
//! `CapabilityBoundingSet`, in a container, or on a host whose bounding set dropped one.
//! `privileged` and `addCapabilities: [ALL]` then mean "everything the agent holds",
//! as containerd's `WithAllCurrentCapabilities` and Podman's privileged do; a capability
//! named explicitly that the agent lacks is an error that says so.

use std::collections::HashSet;

use oci_spec::runtime::Capability;
use shared_proto::manifest::DesiredContainer;

use crate::bundle::BundleError;

/// Docker's default capability set without `CAP_NET_RAW` (raw sockets let a
/// container forge packets on a shared network; an app that needs ping asks for it).
pub const DEFAULT_CAPABILITIES: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability by its kernel number (`linux/capability.h`), 0 to 40.
pub const BY_NUMBER: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// A set of capabilities as the kernel writes it: bit `n` is capability number `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilityMask(pub u64);

impl CapabilityMask {
    /// Every capability this agent knows.
    pub const ALL: CapabilityMask = CapabilityMask((1 << BY_NUMBER.len()) - 1);

    /// The `CapEff:` line of a `/proc/<pid>/status` text; `None` when absent or malformed.
    pub fn from_status(status: &str) -> Option<CapabilityMask> {
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
        u64::from_str_radix(hex, 16).ok().map(CapabilityMask)
    }

    /// What this process may hand to a container: its effective set (the agent runs as
    /// root, so it is its bounding set). Unreadable counts as the default set only, which
    /// never asks the kernel for more than any root process holds.
    pub fn held() -> CapabilityMask {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| CapabilityMask::from_status(&s))
            .unwrap_or_else(|| CapabilityMask::of(DEFAULT_CAPABILITIES))
    }

    pub fn of(caps: impl IntoIterator<Item = Capability>) -> CapabilityMask {
        CapabilityMask(caps.into_iter().filter_map(number).fold(0, |m, n| m | 1 << n))
    }

    pub fn contains(self, cap: Capability) -> bool {
        number(cap).is_some_and(|n| self.0 & (1 << n) != 0)
    }

    /// The capabilities in the set, in kernel order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        BY_NUMBER.into_iter().filter(move |&c| self.contains(c))
    }
}

fn number(cap: Capability) -> Option<usize> {
    BY_NUMBER.iter().position(|&c| c == cap)
}

/// The container's capability set: the default one, minus what is dropped, plus what
/// is added; every held capability for a privileged container. The default set is
/// quietly cut to what the agent holds (it is our choice, not the app's); a capability
/// the app names that the agent lacks is an error.
pub fn for_container(c: &DesiredContainer, held: CapabilityMask) -> Result<HashSet<Capability>, BundleError> {
    let parse = |name: &str| -> Result<Capability, BundleError> {
        let bare = name.to_ascii_uppercase();
        let bare = bare.strip_prefix("CAP_").unwrap_or(&bare).to_string();
        bare.parse::<Capability>()
            .map_err(|_| BundleError::Capability { container: c.name.clone(), name: name.to_string() })
    };
    let s = &c.security;
    if s.privileged {
        return Ok(held.iter().collect());
    }
    let mut caps: HashSet<Capability> =
        DEFAULT_CAPABILITIES.into_iter().filter(|&c| held.contains(c)).collect();
    for d in &s.drop_capabilities {
        if d.eq_ignore_ascii_case("ALL") {
            caps.clear();
        } else {
            caps.remove(&parse(d)?);
        }
    }
    for a in &s.add_capabilities {
        if a.eq_ignore_ascii_case("ALL") {
            caps.extend(held.iter());
            continue;
        }
        let cap = parse(a)?;
        if !held.contains(cap) {
            return Err(BundleError::CapabilityNotHeld { container: c.name.clone(), name: a.clone() });
        }
        caps.insert(cap);
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_numbers_and_the_status_line() {
        // This machine's shape: every capability but SYS_RESOURCE (24).
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n\
                      CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n";
        let held = CapabilityMask::from_status(status).unwrap();
        assert!(!held.contains(Capability::SysResource));
        assert!(held.contains(Capability::SysAdmin) && held.contains(Capability::CheckpointRestore));
        assert_eq!(held.iter().count(), 40);
        assert_eq!(
            CapabilityMask::from_status("CapEff:\t00000000a80425fb\n"),
            Some(CapabilityMask(0xa80425fb))
        );
        // Docker's default set, as `capsh --decode=00000000a80425fb` names it.
        let docker = CapabilityMask::of(DEFAULT_CAPABILITIES.into_iter().chain([Capability::NetRaw]));
        assert_eq!(docker, CapabilityMask(0xa80425fb));
        assert_eq!(CapabilityMask::from_status("CapPrm:\t0\n"), None);
        assert_eq!(CapabilityMask::ALL.iter().count(), 41);
        for name in shared_proto::validate::CAPABILITIES {
            let cap: Capability =
                name.parse().unwrap_or_else(|_| panic!("{name} is a capability oci-spec knows"));
            assert!(CapabilityMask::ALL.contains(cap), "{name} has a kernel number here");
        }
    }

    #[test]
    fn a_container_gets_at_most_what_the_agent_holds() {
        let lacking = CapabilityMask(CapabilityMask::ALL.0 & !(1 << 24));
        let mut c = DesiredContainer { name: "web".into(), ..Default::default() };
        c.security.privileged = true;
        let caps = for_container(&c, lacking).unwrap();
        assert_eq!(caps.len(), 40);
        assert!(!caps.contains(&Capability::SysResource) && caps.contains(&Capability::SysAdmin));
        assert_eq!(for_container(&c, CapabilityMask::ALL).unwrap().len(), 41);

        c.security = Default::default();
        c.security.add_capabilities = vec!["ALL".into()];
        assert_eq!(for_container(&c, lacking).unwrap().len(), 40);
        c.security.add_capabilities = vec!["sys_resource".into()];
        let err = for_container(&c, lacking).unwrap_err().to_string();
        assert!(err.contains("sys_resource") && err.contains("does not hold"), "{err}");
        assert!(for_container(&c, CapabilityMask::ALL).unwrap().contains(&Capability::SysResource));

        // The default set is cut quietly to what is held.
        c.security = Default::default();
        let no_mknod = CapabilityMask(CapabilityMask::ALL.0 & !(1 << 27));
        let caps = for_container(&c, no_mknod).unwrap();
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() - 1);
        assert!(!caps.contains(&Capability::Mknod));
    }
}
