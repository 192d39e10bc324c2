//! The vendored libcontainer patch that compiles a seccomp profile once in the helper
//! and loads the program in each container's init (`third_party/libcontainer`, which
//! cargo cannot test as a non-member): caching, and a loaded program that filters.

use agent_runtime::seccomp::{KernelVersion, SeccompArch, default_profile};
use libcontainer::seccomp::{compile_seccomp, load_compiled};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder};
use std::collections::HashSet;
use std::sync::Arc;

fn denying(names: &[&str], action: LinuxSeccompAction) -> LinuxSeccomp {
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![
            LinuxSyscallBuilder::default()
                .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .action(action)
                .errno_ret(libc::EPERM as u32)
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap()
}

#[test]
fn one_compilation_per_profile() {
    let a = compile_seccomp(&denying(&["getcwd"], LinuxSeccompAction::ScmpActErrno)).unwrap().unwrap();
    let again = compile_seccomp(&denying(&["getcwd"], LinuxSeccompAction::ScmpActErrno)).unwrap().unwrap();
    let b = compile_seccomp(&denying(&["chdir"], LinuxSeccompAction::ScmpActErrno)).unwrap().unwrap();
    assert!(Arc::ptr_eq(&a, &again), "the same profile is compiled once");
    assert!(!Arc::ptr_eq(&a, &b));
    assert_ne!(*a, *b, "different profiles, different programs");
    assert!(!a.is_empty());
}

#[test]
fn the_default_profile_compiles() {
    let profile = default_profile(&HashSet::new(), SeccompArch::native(), KernelVersion(6, 1)).unwrap();
    let program = compile_seccomp(&profile).unwrap().expect("no notify action in the default profile");
    // Three ABIs on x86_64, hundreds of syscalls: a program of that order, not a stub.
    assert!(program.len() > 300, "{} instructions", program.len());
}

#[test]
fn notify_profiles_are_left_to_the_init() {
    assert!(compile_seccomp(&denying(&["getcwd"], LinuxSeccompAction::ScmpActNotify)).unwrap().is_none());
}

#[test]
fn a_loaded_program_filters_the_calling_thread() {
    let compiled = compile_seccomp(&denying(&["getcwd"], LinuxSeccompAction::ScmpActErrno)).unwrap().unwrap();
    // In a child process, so the filter does not stay on the test runner. The child
    // only makes raw syscalls and `_exit`s: it reports the step that failed.
    // SAFETY: fork in a test; the child calls only async-signal-safe functions.
    match unsafe { libc::fork() } {
        0 => {
            let step = (|| {
                // SAFETY: plain prctl/getcwd calls on the child's own state.
                if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                    return 2;
                }
                let mut buf = [0u8; 256];
                // SAFETY: as above.
                if unsafe { libc::getcwd(buf.as_mut_ptr().cast(), buf.len()) }.is_null() {
                    return 3; // getcwd must work before the filter
                }
                if load_compiled(&compiled).is_err() {
                    return 4;
                }
                // SAFETY: as above.
                let after = unsafe { libc::getcwd(buf.as_mut_ptr().cast(), buf.len()) };
                if !after.is_null() || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
                    return 5;
                }
                0
            })();
            // SAFETY: leave the forked child without running the test harness's atexit.
            unsafe { libc::_exit(step) };
        }
        pid => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status));
            assert_eq!(libc::WEXITSTATUS(status), 0, "child failed at step {}", libc::WEXITSTATUS(status));
        }
    }
}
