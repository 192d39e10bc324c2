//! Seccomp filters compiled once, in the runtime's own process, and loaded by each
//! container's init as a ready BPF program.
//!
//! Building a libseccomp filter for a profile the size of Docker's default (about 350
//! syscalls over three ABIs) and generating its BPF takes milliseconds of CPU, and
//! [`super::initialize_seccomp`] pays it again in every container's init process.
//! Here the runtime compiles a profile before it forks the container's processes and
//! keeps the program, keyed by the profile itself, so containers that share a profile
//! share one compilation; the init then only issues `seccomp(2)` with the program it
//! inherited across the fork. crun does the same with its on-disk BPF cache.
//!
//! Profiles with `SCMP_ACT_NOTIFY` are not compiled ahead: their init must hand a
//! listener fd back, which only the libseccomp load path provides.

use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompFilterFlag};

use super::{Result, SeccompError, build_filter, is_notify};

/// How many distinct compiled profiles one runtime process keeps.
const CACHE_CAPACITY: usize = 16;

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_TSYNC: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 1 << 1;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_ulong = 1 << 2;
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 1 << 5;

/// A profile compiled to a classic BPF program, with the `seccomp(2)` flags its
/// filter attributes ask for.
#[derive(Debug, PartialEq, Eq)]
pub struct CompiledSeccomp {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl CompiledSeccomp {
    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }
}

type Cache = Vec<(Vec<u8>, Arc<CompiledSeccomp>)>;

static CACHE: Mutex<Cache> = Mutex::new(Vec::new());

/// The compiled program for `seccomp`, from this process's cache or compiled now.
/// `Ok(None)` for a profile that must go through [`super::initialize_seccomp`]
/// (a notify action).
pub fn compile_seccomp(seccomp: &LinuxSeccomp) -> Result<Option<Arc<CompiledSeccomp>>> {
    if is_notify(seccomp) {
        return Ok(None);
    }
    let key = serde_json::to_vec(seccomp).map_err(|err| SeccompError::Compile {
        reason: format!("serializing the profile: {err}"),
    })?;
    if let Some(found) = lookup(&key) {
        return Ok(Some(found));
    }
    // Compiled outside the lock; a thread that compiled the same profile meanwhile
    // wins, so every caller shares one program.
    let compiled = Arc::new(compile_uncached(seccomp)?);
    let mut cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, first)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(Some(Arc::clone(first)));
    }
    if cache.len() >= CACHE_CAPACITY {
        cache.remove(0);
    }
    cache.push((key, Arc::clone(&compiled)));
    Ok(Some(compiled))
}

fn lookup(key: &[u8]) -> Option<Arc<CompiledSeccomp>> {
    let cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .iter()
        .find(|(k, _)| k.as_slice() == key)
        .map(|(_, compiled)| Arc::clone(compiled))
}

fn compile_uncached(seccomp: &LinuxSeccomp) -> Result<CompiledSeccomp> {
    let ctx = build_filter(seccomp)?;
    // SAFETY: a constant NUL-terminated name; the returned fd is owned below.
    let fd = unsafe { libc::memfd_create(c"seccomp-bpf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SeccompError::Compile {
            reason: format!("memfd_create: {}", std::io::Error::last_os_error()),
        });
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    ctx.export_bpf(&file)
        .map_err(|err| SeccompError::Compile {
            reason: format!("exporting the BPF program: {err}"),
        })?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|err| SeccompError::Compile {
            reason: format!("reading the BPF program back: {err}"),
        })?;
    let program = decode_program(&bytes)?;
    Ok(CompiledSeccomp {
        program,
        flags: filter_flags(seccomp),
    })
}

/// `seccomp_export_bpf` writes the `struct sock_filter` array in host byte order.
fn decode_program(bytes: &[u8]) -> Result<Vec<libc::sock_filter>> {
    const INSN: usize = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty() || bytes.len() % INSN != 0 || bytes.len() / INSN > libc::c_ushort::MAX as usize {
        return Err(SeccompError::Compile {
            reason: format!("libseccomp exported {} bytes, not a BPF program", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(INSN)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// The `seccomp(2)` flags libseccomp would pass for the profile's filter attributes.
fn filter_flags(seccomp: &LinuxSeccomp) -> libc::c_ulong {
    seccomp
        .flags()
        .iter()
        .flatten()
        .map(|flag| match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            }
        })
        .fold(0, |all, flag| all | flag)
}

/// Installs a compiled program on the calling thread. As with libseccomp's load, the
/// thread needs `no_new_privs` or `CAP_SYS_ADMIN` in its user namespace.
pub fn load_compiled(compiled: &CompiledSeccomp) -> Result<()> {
    let prog = libc::sock_fprog {
        len: compiled.program.len() as libc::c_ushort,
        filter: compiled.program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `len` instructions that outlive the call; the kernel
    // copies the program before returning.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            compiled.flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(SeccompError::LoadCompiled {
            source: nix::errno::Errno::last(),
        });
    }
    Ok(())
}
