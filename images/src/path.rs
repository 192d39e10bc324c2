//! Checking the untrusted relative paths found in archives before anything touches disk.

/// Longer paths than the kernel's `PATH_MAX` cannot be real.
pub(crate) const MAX_PATH_BYTES: usize = 4096;
/// Bounds recursion (and open directory handles) when walking or removing trees.
pub(crate) const MAX_DEPTH: usize = 128;

/// Splits an archive path into its components, dropping empty and `.` ones. Refuses
/// absolute paths and `..` outright rather than resolving them: a well-formed image or
/// layout never needs them, and refusing leaves no room for a resolution bug.
pub(crate) fn components(path: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if path.len() > MAX_PATH_BYTES {
        return Err("path is longer than 4096 bytes");
    }
    if path.first() == Some(&b'/') {
        return Err("absolute paths are not allowed");
    }
    if path.contains(&0) {
        return Err("path contains a NUL byte");
    }
    let mut out = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("`..` is not allowed in paths"),
            _ => out.push(part),
        }
    }
    if out.len() > MAX_DEPTH {
        return Err("path is nested more than 128 levels deep");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_and_refuses() {
        assert_eq!(components(b"./a//b/./c/").unwrap(), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(components(b"./").unwrap(), Vec::<&[u8]>::new());
        assert_eq!(components(b"a..b/..c").unwrap(), vec![&b"a..b"[..], b"..c"]);
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"..").is_err());
        assert!(components(b"a/b\0c").is_err());
        assert!(components("a/".repeat(200).as_bytes()).is_err());
        assert!(components(&[b'x'; 5000]).is_err());
    }
}
