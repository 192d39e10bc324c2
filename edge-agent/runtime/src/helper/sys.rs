//! Thin wrappers over the Linux calls the helper needs and nix 0.29 lacks: pidfds,
//! `/proc/<pid>/stat`, and bringing a new network namespace's loopback up.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};

/// A pidfd pins one process: signals sent through it can never reach a process that
/// reused the pid, and it polls readable once the process has ended.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us (with O_CLOEXEC set); we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a valid fd, a signal number, no siginfo, no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process behind `pidfd` has ended, waiting at most `timeout`.
pub(crate) fn pidfd_exited(pidfd: BorrowedFd<'_>, timeout: PollTimeout) -> io::Result<bool> {
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, timeout) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The fields of `/proc/<pid>/stat` the helper cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub ppid: i32,
    /// Clock ticks after boot; with the pid it identifies one process for good.
    pub start_ticks: u64,
}

impl ProcStat {
    pub(crate) fn has_ended(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

pub(crate) fn proc_stat(pid: i32) -> io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_proc_stat(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unparsable /proc/{pid}/stat")))
}

fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) may hold spaces and parentheses: fields restart after
    // the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 4 is ppid, field 22 is starttime.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Seconds since the epoch at which the system booted (`btime` in `/proc/stat`).
pub(crate) fn boot_time_secs() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/stat")?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no btime in /proc/stat"))
}

pub(crate) fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// A new network namespace starts with `lo` down; containers with no network still
/// expect 127.0.0.1 to work, as Docker and Kubernetes provide. No-op when `pid` shares
/// our network namespace.
pub(crate) fn bring_up_loopback(pid: i32) -> io::Result<()> {
    let theirs = File::open(format!("/proc/{pid}/ns/net"))?;
    let ours = File::open("/proc/self/ns/net")?;
    let (a, b) = (theirs.metadata()?, ours.metadata()?);
    if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
        return Ok(());
    }
    // Sockets and interface flags belong to the calling thread's namespace: step in,
    // bring `lo` up, step back. The helper is single-threaded, so nothing else runs in
    // the meantime.
    setns(theirs.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let up = crate::pod::loopback_up();
    if let Err(e) = setns(ours.as_fd(), CloneFlags::CLONE_NEWNET) {
        // Staying in a container's namespace would silently break every later
        // container; dying is the only safe answer (containers keep running).
        eprintln!("flotilla runtime helper: cannot return to its own network namespace: {e}");
        std::process::exit(70);
    }
    up
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let text = "1234 (we ird) (x)) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615";
        let s = parse_proc_stat(text).unwrap();
        assert_eq!(s, ProcStat { state: 'S', ppid: 77, start_ticks: 987654 });
        assert!(!s.has_ended());
        assert!(parse_proc_stat("garbage").is_none());
    }

    #[test]
    fn own_stat_is_readable_and_pidfd_works() {
        let me = std::process::id() as i32;
        let s = proc_stat(me).unwrap();
        assert!(!s.has_ended());
        let fd = pidfd_open(me).unwrap();
        assert!(!pidfd_exited(fd.as_fd(), PollTimeout::ZERO).unwrap());
    }
}
