//! Running commands and installing system packages, for the tasks.

use anyhow::{Context, bail};
use std::process::Command;

/// Runs `cmd`, echoing it first; fails with its exit status.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {}", display(cmd));
    let status = cmd.status().with_context(|| format!("starting {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", display(cmd));
    }
    Ok(())
}

pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the Debian packages that are missing (needs root).
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: install them (apt-get install -y {}) or run as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("installing {}", missing.join(" "));
    let lists_empty = std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| !d.flatten().any(|e| e.file_name().to_string_lossy().contains("Packages")))
        .unwrap_or(true);
    if lists_empty {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    let install = || {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing))
    };
    // Lists older than a security update name versions the mirror no longer has
    // (the kernel package moves often): refresh them once and try again.
    install().or_else(|e| {
        eprintln!("{e:#}; refreshing the package lists");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        install()
    })
}

/// The schemathesis version the API acceptance test runs (PyPI), pinned so a run
/// today and a run next month test the same way.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Where [`ensure_schemathesis`] keeps its virtual environment (Debian's Python is
/// externally managed, PEP 668: nothing goes into the system site-packages).
pub const SCHEMATHESIS_VENV: &str = "/var/cache/flotilla/schemathesis";

/// Installs schemathesis into its own venv when missing (or at another version), and
/// returns the path of its `st` command.
pub fn ensure_schemathesis() -> anyhow::Result<std::path::PathBuf> {
    let venv = std::path::Path::new(SCHEMATHESIS_VENV);
    let st = venv.join("bin/st");
    let installed = Command::new(venv.join("bin/python"))
        .args(["-c", "import importlib.metadata as m; print(m.version('schemathesis'))"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == SCHEMATHESIS_VERSION
        });
    if installed && st.exists() {
        return Ok(st);
    }
    eprintln!("installing schemathesis {SCHEMATHESIS_VERSION} into {}", venv.display());
    // Debian's own interpreter, which python3-venv serves (not one a user put first on PATH).
    let python =
        if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    run(Command::new(python).args(["-m", "venv", "--clear"]).arg(venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}")))?;
    Ok(st)
}
