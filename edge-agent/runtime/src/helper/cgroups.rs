//! Removing a stopped container's (empty) cgroup directories, which the helper does
//! itself: libcontainer's delete first re-discovers every hierarchy through two `/proc`
//! parses per controller, over a millisecond per container on a small machine, where
//! one `mountinfo` read is enough.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Mount points of every cgroup hierarchy, v1 and v2.
fn cgroup_mounts() -> io::Result<Vec<PathBuf>> {
    Ok(parse_cgroup_mounts(&fs::read_to_string("/proc/self/mountinfo")?))
}

fn parse_cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let fstype = *fields.get(dash + 1)?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(fields.get(4)?))
        })
        .collect()
}

/// `cgroup_path` (as in a spec: absolute, relative to each hierarchy's root) under
/// `mount_point`, refusing anything that could climb out.
fn join_cgroup(mount_point: &Path, cgroup_path: &Path) -> Option<PathBuf> {
    let mut out = mount_point.to_path_buf();
    for c in cgroup_path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Removes the directories of cgroup `cgroup_path` in every hierarchy. `Ok(false)`
/// when one still holds processes (or sub-groups): the caller must fall back to a
/// delete that kills them.
pub(super) fn remove_container_cgroups(cgroup_path: &Path) -> io::Result<bool> {
    if cgroup_path.components().all(|c| matches!(c, Component::RootDir)) {
        return Ok(false);
    }
    for mount_point in cgroup_mounts()? {
        let Some(dir) = join_cgroup(&mount_point, cgroup_path) else { return Ok(false) };
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
34 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_cgroup_hierarchies() {
        let m = parse_cgroup_mounts(MOUNTINFO);
        assert_eq!(
            m,
            ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/unified"]
                .map(PathBuf::from)
        );
    }

    #[test]
    fn cgroup_paths_cannot_climb_out() {
        let mp = Path::new("/sys/fs/cgroup/pids");
        assert_eq!(
            join_cgroup(mp, Path::new("/flotilla/a")),
            Some(PathBuf::from("/sys/fs/cgroup/pids/flotilla/a"))
        );
        assert_eq!(join_cgroup(mp, Path::new("/flotilla/../../etc")), None);
        assert!(!remove_container_cgroups(Path::new("/")).unwrap(), "the root is never removed");
    }
}
