//! Who may enter the agent's directories. An app with `userNamespace` runs as an
//! unprivileged id of the device, and its containers' init opens their root filesystem,
//! the pod's namespace and hosts files, persistent volumes and Config and Secret files
//! as that id; so the directories on the way there let everyone search them (0701, as
//! Docker's root directory), and everything else in them stays the device root's:
//!
//! ```text
//! state_dir 0701        containers 0701 ─ <id> 0700 | root:<app root> 0710 (its app's)
//!                       volumes    0701 ─ <app> 0700 | root:<app root> 0710
//!                       anything else     private (group and other bits cleared)
//! runtime_dir 0701      pods       0701 ─ <app> 0700 | root:<app root> 0710
//!                       private    0701 ─ configs 0701 ─ <id> 0700 | root:<app root> 0710
//!                                         bundles 0700, anything else private
//! ```
//!
//! The per-app and per-container directories are restricted where they are made
//! ([`agent_runtime::userns::restrict_dir`], from the host, the pod and the rootfs);
//! [`make_private_but_passable`] sets the passages at start and takes back anything
//! else a previous version or a crash left open, so a name that is known (app names
//! are not secret) opens nothing.

use agent_runtime::userns::{PASS_THROUGH_MODE, restrict_dir, set_mode};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::AgentConfig;

/// Directories of `state_dir` and `runtime_dir` (and of the private tmpfs in it) that
/// apps' roots pass through.
const STATE_PASSAGES: [&str; 2] = ["containers", "volumes"];
const RUNTIME_PASSAGES: [&str; 2] = ["pods", "private"];
const PRIVATE_PASSAGES: [&str; 1] = ["configs"];

/// Sets the passages of the agent's directories (creating the top ones) and makes
/// everything else in them private. Call after the private tmpfs is mounted.
pub fn make_private_but_passable(config: &AgentConfig) -> io::Result<()> {
    for dir in [&config.state_dir, &config.runtime_dir] {
        std::fs::create_dir_all(dir)?;
        set_mode(dir, PASS_THROUGH_MODE)?;
    }
    // Made now, so the sweep closes them before anything is written in them.
    for dir in [config.blobs_dir(), config.images_dir(), config.logs_dir(), config.bundles_dir()] {
        std::fs::create_dir_all(dir)?;
    }
    sweep(&config.state_dir, &STATE_PASSAGES)?;
    sweep(&config.runtime_dir, &RUNTIME_PASSAGES)?;
    sweep(&config.private_dir(), &PRIVATE_PASSAGES)
}

/// Entries of `dir` named in `passages` become passages (their own entries private or
/// an app's 0710); every other entry loses its group and other bits.
fn sweep(dir: &Path, passages: &[&str]) -> io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let passage = meta.is_dir() && entry.file_name().to_str().is_some_and(|n| passages.contains(&n));
        if !passage {
            if meta.mode() & 0o077 != 0 {
                set_mode(&path, meta.mode() & 0o7700)?;
            }
            continue;
        }
        set_mode(&path, PASS_THROUGH_MODE)?;
        for child in std::fs::read_dir(&path)?.flatten() {
            let child_path = child.path();
            let m = std::fs::symlink_metadata(&child_path)?;
            if m.file_type().is_symlink() {
                continue;
            }
            // An app's (root:<its root> 0710, made by restrict_dir) stays; the rest
            // is the device root's alone.
            let apps = m.is_dir() && m.uid() == 0 && m.gid() != 0 && m.mode() & 0o7777 == 0o710;
            if apps {
                continue;
            }
            if m.is_dir() {
                restrict_dir(&child_path, None)?;
            } else if m.mode() & 0o077 != 0 {
                set_mode(&child_path, m.mode() & 0o7700)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn passages_open_and_everything_else_closes() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to hand directories to other ids");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let open =
            |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        for d in ["containers/a_main_1/upper", "containers/b_main_2", "volumes/a/data", "images/x", "logs"] {
            std::fs::create_dir_all(state.join(d)).unwrap();
        }
        for f in ["state.redb", "device.crt", "logs/a_main_1.log"] {
            std::fs::write(state.join(f), "x").unwrap();
            open(&state.join(f), 0o644);
        }
        for d in ["containers", "containers/a_main_1", "volumes", "volumes/a", "images", "logs"] {
            open(&state.join(d), 0o755);
        }
        // An app's container directory, as restrict_dir left it.
        let shifted = state.join("containers/b_main_2");
        restrict_dir(&shifted, Some(1 << 30)).unwrap();
        open(&state, 0o700);

        set_mode(&state, PASS_THROUGH_MODE).unwrap();
        sweep(&state, &STATE_PASSAGES).unwrap();
        assert_eq!(mode(&state), 0o701);
        assert_eq!((mode(&state.join("containers")), mode(&state.join("volumes"))), (0o701, 0o701));
        assert_eq!(mode(&state.join("containers/a_main_1")), 0o700, "a container's own: private");
        assert_eq!(mode(&state.join("containers/a_main_1/upper")), 0o755, "inside is untouched");
        assert_eq!(mode(&state.join("volumes/a")), 0o700);
        let meta = std::fs::metadata(&shifted).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o710, 1 << 30), "an app's stays its own");
        assert_eq!((mode(&state.join("images")), mode(&state.join("logs"))), (0o700, 0o700));
        assert_eq!((mode(&state.join("state.redb")), mode(&state.join("device.crt"))), (0o600, 0o600));
        assert_eq!(mode(&state.join("logs/a_main_1.log")), 0o644, "under a private directory, left alone");

        // Idempotent; and a directory turned back (the app dropped its user namespace).
        restrict_dir(&shifted, None).unwrap();
        sweep(&state, &STATE_PASSAGES).unwrap();
        let meta = std::fs::metadata(&shifted).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o700, 0));
    }
}
