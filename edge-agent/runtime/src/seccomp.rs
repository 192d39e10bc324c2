//! The default seccomp profile: the policy Docker, containerd and Podman ship, rebuilt
//! from a table rather than pasted as JSON.
//!
//! Origin: moby/profiles `seccomp/default.json` at tag `seccomp/v0.2.3` (commit
//! 836ae4d3, 2026-05-06), Apache-2.0 — the profile Docker Engine embeds. Everything not
//! listed fails with `EPERM`; [`ALLOWED`] is its unconditional allow-list verbatim, and
//! [`RULES`] its conditional entries, keeping only the parts that can apply to the
//! architectures the agent ships for (x86_64, aarch64, armv7: the ppc64le, s390x and
//! riscv64 entries are left out). [`default_profile`] folds the table the way moby's
//! `setupSeccomp` does: an entry that needs a capability is kept only when the
//! container's bounding set has it, one that excludes a capability only when it does
//! not, and `minKernel` against the running kernel. To move to a newer profile, diff
//! the two tags' `default.json` and carry the changes into the table; the unit tests
//! pin the decisions that matter.
//!
//! Names the device's libseccomp does not know (newer syscalls) are skipped by
//! libcontainer, as by runc: a syscall the library cannot name, the kernel of that
//! era cannot have either.

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use std::collections::HashSet;

/// The architectures the agent ships for, as the profile's `arches` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompArch {
    X86_64,
    Aarch64,
    Arm,
}

impl SeccompArch {
    /// The architecture this agent was built for; `None` for one the profile does not
    /// cover (the container then runs with the native architecture only).
    pub fn native() -> Option<SeccompArch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(SeccompArch::X86_64),
            "aarch64" => Some(SeccompArch::Aarch64),
            "arm" => Some(SeccompArch::Arm),
            _ => None,
        }
    }

    /// moby's `archMap`: the native ABI and the compatible ones a process may call
    /// through (32-bit calls on a 64-bit kernel), each filtered alike.
    fn filter_arches(self) -> Vec<Arch> {
        match self {
            SeccompArch::X86_64 => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
            SeccompArch::Aarch64 => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
            SeccompArch::Arm => vec![Arch::ScmpArchArm],
        }
    }
}

/// The kernel's `major.minor`, for rules with a `minKernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    /// From a release string such as `6.1.0-21-arm64` or `6.18.44-fc`; `None` when it
    /// does not start with two numbers.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
        Some(KernelVersion(parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    /// The running kernel (`/proc/sys/kernel/osrelease`); unknown counts as old, which
    /// only ever denies more.
    pub fn running() -> KernelVersion {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| KernelVersion::parse(&r))
            .unwrap_or_default()
    }
}

/// Allowed for every container (moby's first, unconditional entry, in its order).
pub const ALLOWED: &str = "
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2
dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64
futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32
geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday
getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64
ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listmount listxattr
listxattrat llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise
map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock
mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget
msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect
open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free
pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease
pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr removexattrat rename
renameat renameat2 restart_syscall riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select
semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg
sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer
setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid
setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid
setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statmount statx
symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
truncate64 ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat utimensat_time64
utimes vfork vmsplice wait4 waitid waitpid write writev";

/// `errno` for denied calls: `EPERM`, as Docker.
const DENY_ERRNO: u32 = libc::EPERM as u32;
/// Namespace flags of `clone(2)` (`CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER |
/// NEWPID | NEWNET`): without `CAP_SYS_ADMIN` a container may clone, but not into new
/// namespaces.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7e02_0000;

#[derive(Debug, Clone, Copy)]
enum RuleAction {
    Allow,
    Errno(u32),
}

/// An argument check: `args[index] <op> value`; for `MaskedEq`, `args[index] & mask == value`.
#[derive(Debug, Clone, Copy)]
enum ArgCheck {
    Lt(u64),
    Eq(u64),
    Gt(u64),
    MaskedEq { mask: u64, value: u64 },
}

/// One conditional entry of the profile.
#[derive(Debug, Clone, Copy)]
struct Rule {
    names: &'static str,
    action: RuleAction,
    /// On the first argument; the profile's entries for our architectures check no other.
    arg0: Option<ArgCheck>,
    /// Only on these architectures (empty: all).
    arches: &'static [SeccompArch],
    /// Only when the container has this capability (`includes.caps`).
    with_cap: Option<Capability>,
    /// Only when it has not (`excludes.caps`).
    without_cap: Option<Capability>,
    /// Only on this kernel or newer (`includes.minKernel`).
    min_kernel: Option<KernelVersion>,
}

const fn allow(names: &'static str) -> Rule {
    Rule {
        names,
        action: RuleAction::Allow,
        arg0: None,
        arches: &[],
        with_cap: None,
        without_cap: None,
        min_kernel: None,
    }
}

const fn with(cap: Capability, names: &'static str) -> Rule {
    Rule { with_cap: Some(cap), ..allow(names) }
}

const fn on(arches: &'static [SeccompArch], names: &'static str) -> Rule {
    Rule { arches, ..allow(names) }
}

const fn arg0(check: ArgCheck, names: &'static str) -> Rule {
    Rule { arg0: Some(check), ..allow(names) }
}

use SeccompArch::{Aarch64, Arm, X86_64};

/// moby's conditional entries, in its order, for x86_64, aarch64 and arm.
const RULES: &[Rule] = &[
    Rule { min_kernel: Some(KernelVersion(4, 8)), ..allow("process_vm_readv process_vm_writev ptrace") },
    // Every socket family but AF_ALG (38) and AF_VSOCK (40).
    arg0(ArgCheck::Lt(38), "socket"),
    arg0(ArgCheck::Eq(39), "socket"),
    arg0(ArgCheck::Gt(40), "socket"),
    // personality(2): only PER_LINUX, PER_LINUX32, UNAME26 variants and the query.
    arg0(ArgCheck::Eq(0x0), "personality"),
    arg0(ArgCheck::Eq(0x8), "personality"),
    arg0(ArgCheck::Eq(0x20000), "personality"),
    arg0(ArgCheck::Eq(0x20008), "personality"),
    arg0(ArgCheck::Eq(0xffff_ffff), "personality"),
    on(
        &[Arm, Aarch64],
        "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
    ),
    on(&[X86_64], "arch_prctl"),
    on(&[X86_64], "modify_ldt"),
    with(Capability::DacReadSearch, "open_by_handle_at"),
    with(
        Capability::SysAdmin,
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie \
         lsm_get_self_attr lsm_list_modules lsm_set_self_attr mount mount_setattr move_mount \
         open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname setns syslog \
         umount umount2 unshare",
    ),
    Rule {
        without_cap: Some(Capability::SysAdmin),
        ..arg0(ArgCheck::MaskedEq { mask: CLONE_NAMESPACE_FLAGS, value: 0 }, "clone")
    },
    // ENOSYS, so that libc falls back to clone(2), which the rule above can inspect.
    Rule {
        action: RuleAction::Errno(libc::ENOSYS as u32),
        without_cap: Some(Capability::SysAdmin),
        ..allow("clone3")
    },
    with(Capability::SysBoot, "reboot"),
    with(Capability::SysChroot, "chroot"),
    with(Capability::SysModule, "delete_module init_module finit_module"),
    with(Capability::SysPacct, "acct"),
    with(Capability::SysPtrace, "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace"),
    with(Capability::SysRawio, "iopl ioperm"),
    with(Capability::SysTime, "settimeofday stime clock_settime clock_settime64"),
    with(Capability::SysTtyConfig, "vhangup"),
    with(Capability::SysNice, "get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
    with(Capability::Syslog, "syslog"),
    with(Capability::Bpf, "bpf"),
    with(Capability::Perfmon, "perf_event_open"),
];

impl Rule {
    fn applies(&self, arch: Option<SeccompArch>, caps: &HashSet<Capability>, kernel: KernelVersion) -> bool {
        (self.arches.is_empty() || arch.is_some_and(|a| self.arches.contains(&a)))
            && self.with_cap.is_none_or(|c| caps.contains(&c))
            && self.without_cap.is_none_or(|c| !caps.contains(&c))
            && self.min_kernel.is_none_or(|k| kernel >= k)
    }

    fn to_syscall(self) -> Result<LinuxSyscall, OciSpecError> {
        let mut b = LinuxSyscallBuilder::default()
            .names(self.names.split_whitespace().map(String::from).collect::<Vec<_>>());
        b = match self.action {
            RuleAction::Allow => b.action(LinuxSeccompAction::ScmpActAllow),
            RuleAction::Errno(errno) => b.action(LinuxSeccompAction::ScmpActErrno).errno_ret(errno),
        };
        if let Some(check) = self.arg0 {
            let arg = LinuxSeccompArgBuilder::default().index(0usize);
            let arg = match check {
                ArgCheck::Lt(v) => arg.op(LinuxSeccompOperator::ScmpCmpLt).value(v),
                ArgCheck::Eq(v) => arg.op(LinuxSeccompOperator::ScmpCmpEq).value(v),
                ArgCheck::Gt(v) => arg.op(LinuxSeccompOperator::ScmpCmpGt).value(v),
                // The runtime spec (and runc) read `value` as the mask and `valueTwo` as
                // what the masked argument must equal; libcontainer 0.7 reads them the
                // other way round (`MaskedEqual(value_two)` compared with `value`). The
                // bundle is only ever read by libcontainer, so it gets libcontainer's
                // order; a libcontainer that switches would deny every clone(2), which
                // the whole-system sandbox test would catch at once (nothing could fork).
                ArgCheck::MaskedEq { mask, value } => {
                    arg.op(LinuxSeccompOperator::ScmpCmpMaskedEq).value(value).value_two(mask)
                }
            };
            b = b.args(vec![arg.build()?]);
        }
        b.build()
    }
}

/// The default profile for a container with capability set `caps`, on `arch` (the
/// agent's own; `None`: native only, no architecture-specific entries) and `kernel`.
pub fn default_profile(
    caps: &HashSet<Capability>,
    arch: Option<SeccompArch>,
    kernel: KernelVersion,
) -> Result<LinuxSeccomp, OciSpecError> {
    let mut syscalls = vec![
        LinuxSyscallBuilder::default()
            .names(ALLOWED.split_whitespace().map(String::from).collect::<Vec<_>>())
            .action(LinuxSeccompAction::ScmpActAllow)
            .build()?,
    ];
    for rule in RULES.iter().filter(|r| r.applies(arch, caps, kernel)) {
        syscalls.push(rule.to_syscall()?);
    }
    let mut b = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(DENY_ERRNO)
        .syscalls(syscalls);
    if let Some(arch) = arch {
        b = b.architectures(arch.filter_arches());
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::DEFAULT_CAPABILITIES;

    /// What the profile does with `name` called with first argument `a0`: the action
    /// of the first rule that matches (libseccomp lets an allow win over a conditional
    /// errno only when both match; the profile never has both for one call).
    fn verdict(p: &LinuxSeccomp, name: &str, a0: u64) -> LinuxSeccompAction {
        let mut found = None;
        for s in p.syscalls().as_ref().unwrap() {
            if !s.names().iter().any(|n| n == name) {
                continue;
            }
            let matches = s.args().as_ref().is_none_or(|args| {
                args.iter().all(|a| match a.op() {
                    LinuxSeccompOperator::ScmpCmpLt => a0 < a.value(),
                    LinuxSeccompOperator::ScmpCmpEq => a0 == a.value(),
                    LinuxSeccompOperator::ScmpCmpGt => a0 > a.value(),
                    // libcontainer's order: mask in value_two.
                    LinuxSeccompOperator::ScmpCmpMaskedEq => a0 & a.value_two().unwrap() == a.value(),
                    op => panic!("unexpected operator {op:?}"),
                })
            });
            if matches {
                if s.action() == LinuxSeccompAction::ScmpActAllow {
                    return s.action();
                }
                found = Some(s.action());
            }
        }
        found.unwrap_or(p.default_action())
    }

    fn default_caps() -> HashSet<Capability> {
        DEFAULT_CAPABILITIES.into_iter().collect()
    }

    const NEW: KernelVersion = KernelVersion(6, 1);
    const ALLOW: LinuxSeccompAction = LinuxSeccompAction::ScmpActAllow;
    const DENY: LinuxSeccompAction = LinuxSeccompAction::ScmpActErrno;

    #[test]
    fn a_default_container_keeps_the_everyday_calls_and_loses_the_dangerous_ones() {
        let p = default_profile(&default_caps(), Some(SeccompArch::X86_64), NEW).unwrap();
        assert_eq!((p.default_action(), p.default_errno_ret()), (DENY, Some(libc::EPERM as u32)));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        for name in
            ["read", "write", "openat", "execve", "futex", "epoll_pwait", "arch_prctl", "setuid", "chown"]
        {
            assert_eq!(verdict(&p, name, 0), ALLOW, "{name}");
        }
        for name in [
            "keyctl",
            "add_key",
            "request_key",
            "kexec_load",
            "kexec_file_load",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "bpf",
            "init_module",
            "reboot",
            "swapon",
            "userfaultfd",
            "clock_settime",
            "perf_event_open",
            "open_by_handle_at",
            "iopl",
            "syslog",
        ] {
            assert_eq!(verdict(&p, name, 0), DENY, "{name}");
        }
        // chroot needs SYS_CHROOT, which the default set has.
        assert_eq!(verdict(&p, "chroot", 0), ALLOW);
        // Not an arm call on x86_64.
        assert_eq!(verdict(&p, "cacheflush", 0), DENY);
    }

    #[test]
    fn clone_without_namespaces_and_sockets_without_af_alg() {
        let p = default_profile(&default_caps(), Some(SeccompArch::X86_64), NEW).unwrap();
        const SIGCHLD: u64 = 17;
        assert_eq!(verdict(&p, "clone", SIGCHLD), ALLOW, "fork");
        assert_eq!(verdict(&p, "clone", 0x0001_0000 | 0x100 | 0x200 | 0x800), ALLOW, "threads");
        for flag in
            [0x0002_0000u64, 0x0200_0000, 0x0400_0000, 0x0800_0000, 0x1000_0000, 0x2000_0000, 0x4000_0000]
        {
            assert_eq!(verdict(&p, "clone", SIGCHLD | flag), DENY, "clone with namespace flag {flag:#x}");
        }
        let clone3 = p.syscalls().as_ref().unwrap().iter().find(|s| s.names() == &["clone3"]).unwrap();
        assert_eq!(clone3.errno_ret(), Some(libc::ENOSYS as u32), "clone3 says ENOSYS so libc uses clone");
        for (family, v) in [
            (1, ALLOW),
            (2, ALLOW),
            (10, ALLOW),
            (16, ALLOW),
            (17, ALLOW),
            (38, DENY),
            (39, ALLOW),
            (40, DENY),
            (44, ALLOW),
        ] {
            assert_eq!(verdict(&p, "socket", family), v, "socket family {family}");
        }
        assert_eq!(verdict(&p, "personality", 0xffff_ffff), ALLOW, "the query");
        assert_eq!(verdict(&p, "personality", 0x0040_0000), DENY, "ADDR_NO_RANDOMIZE");
    }

    #[test]
    fn capabilities_unlock_their_calls() {
        let mut caps = default_caps();
        caps.extend([Capability::SysAdmin, Capability::SysTime, Capability::SysPtrace]);
        let p = default_profile(&caps, Some(SeccompArch::X86_64), NEW).unwrap();
        for name in ["mount", "unshare", "setns", "clock_settime", "ptrace", "process_vm_readv", "kcmp"] {
            assert_eq!(verdict(&p, name, 0), ALLOW, "{name}");
        }
        assert_eq!(verdict(&p, "clone", 0x1000_0000), ALLOW, "SYS_ADMIN may clone into new namespaces");
        assert!(
            p.syscalls().as_ref().unwrap().iter().all(|s| s.action() == ALLOW),
            "no clone3 ENOSYS once SYS_ADMIN allows it"
        );
        // Still no keyring, kexec or modules.
        for name in ["keyctl", "kexec_load", "init_module"] {
            assert_eq!(verdict(&p, name, 0), DENY, "{name}");
        }
        // Dropping capabilities takes their calls away.
        let none = default_profile(&HashSet::new(), Some(SeccompArch::X86_64), NEW).unwrap();
        assert_eq!(verdict(&none, "chroot", 0), DENY, "no SYS_CHROOT");
        assert_eq!(verdict(&none, "read", 0), ALLOW);
    }

    #[test]
    fn kernel_and_architecture_parts() {
        let old = default_profile(&default_caps(), Some(SeccompArch::X86_64), KernelVersion(4, 4)).unwrap();
        assert_eq!(verdict(&old, "ptrace", 0), DENY, "ptrace could escape seccomp before 4.8");
        let new = default_profile(&default_caps(), Some(SeccompArch::X86_64), KernelVersion(4, 8)).unwrap();
        assert_eq!(verdict(&new, "ptrace", 0), ALLOW);

        let arm64 = default_profile(&default_caps(), Some(SeccompArch::Aarch64), NEW).unwrap();
        assert_eq!(arm64.architectures().as_deref(), Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..]));
        assert_eq!(verdict(&arm64, "cacheflush", 0), ALLOW);
        assert_eq!(verdict(&arm64, "arch_prctl", 0), DENY);
        let arm = default_profile(&default_caps(), Some(SeccompArch::Arm), NEW).unwrap();
        assert_eq!(arm.architectures().as_deref(), Some(&[Arch::ScmpArchArm][..]));
        assert_eq!(verdict(&arm, "set_tls", 0), ALLOW);
        let unknown = default_profile(&default_caps(), None, NEW).unwrap();
        assert!(unknown.architectures().is_none(), "native only");
        assert_eq!(verdict(&unknown, "arch_prctl", 0), DENY);

        assert_eq!(KernelVersion::parse("6.18.44-fc-v1045"), Some(KernelVersion(6, 18)));
        assert_eq!(KernelVersion::parse("6.1.0-21-arm64\n"), Some(KernelVersion(6, 1)));
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert!(KernelVersion(6, 1) > KernelVersion(4, 8) && KernelVersion(4, 10) > KernelVersion(4, 8));
    }

    #[test]
    fn the_allow_list_is_mobys() {
        let names: Vec<&str> = ALLOWED.split_whitespace().collect();
        assert_eq!(names.len(), 361, "moby seccomp/v0.2.3 allows 361 calls unconditionally");
        let unique: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "no duplicates");
        for denied in [
            "keyctl",
            "add_key",
            "kexec_load",
            "mount",
            "unshare",
            "ptrace",
            "socket",
            "clone",
            "personality",
            "bpf",
        ] {
            assert!(!unique.contains(denied), "{denied} is conditional or denied");
        }
    }
}
