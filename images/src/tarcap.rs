//! A guard in front of the `tar` crate. That crate reads extension headers (PAX `x`
//! and `g`, GNU long names `L` and long link names `K`) whole into memory, whatever
//! size their header claims, so a small gzip-compressed layer can make it allocate
//! gigabytes. [`ExtensionCap`] follows the tar stream as it passes, header by header,
//! and fails the read as soon as an extension header claims more than its cap. It
//! follows the stream the way the `tar` crate does: every entry's data is its header's
//! size rounded up to 512 bytes (a PAX `size` record overrides it for the next
//! entry), and an old-GNU sparse header may be followed by extension blocks.
//!
//! Written here rather than taken from a crate: no maintained tar crate bounds these
//! headers, and replacing the `tar` crate's parser would be a far larger change.

use std::io::{self, Read};

const BLOCK: usize = 512;

/// Largest extension header accepted by default: long names and PAX records of any
/// real image fit with room to spare.
pub const DEFAULT_EXTENSION_CAP: u64 = 1 << 20;

#[derive(Debug)]
enum State {
    /// Collecting the next 512-byte header.
    Header,
    /// Inside an entry's data (and its padding); `pax` collects a PAX extension's
    /// records to find a `size` override.
    Data { remaining: u64, pax: Option<Vec<u8>>, pax_len: u64 },
    /// Old-GNU sparse extension blocks still to come before the data.
    Sparse { data: u64 },
    /// Past the end-of-archive block: whatever follows is only counted.
    Ended { trailing: u64 },
}

/// Bytes accepted after the end of the archive (tar writers pad to a record of
/// 10 KiB; compressors may add a little).
pub const MAX_TRAILING: u64 = 1 << 20;

pub struct ExtensionCap<R> {
    inner: R,
    cap: u64,
    state: State,
    header: [u8; BLOCK],
    filled: usize,
    /// A PAX `size` for the next entry.
    next_size: Option<u64>,
}

impl<R: Read> ExtensionCap<R> {
    pub fn new(inner: R, cap: u64) -> ExtensionCap<R> {
        ExtensionCap { inner, cap, state: State::Header, header: [0; BLOCK], filled: 0, next_size: None }
    }

    fn inspect(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Ended { trailing } => {
                    *trailing += bytes.len() as u64;
                    if *trailing > MAX_TRAILING {
                        return Err(invalid(format!(
                            "more than {MAX_TRAILING} bytes follow the end of the tar archive"
                        )));
                    }
                    return Ok(());
                }
                State::Data { remaining, pax, pax_len } => {
                    let take = bytes.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    if let Some(buf) = pax {
                        let want = usize::try_from(*pax_len).unwrap_or(usize::MAX).saturating_sub(buf.len());
                        buf.extend_from_slice(&bytes[..take.min(want)]);
                    }
                    *remaining -= take as u64;
                    bytes = &bytes[take..];
                    if *remaining == 0 {
                        if let Some(records) = pax.take() {
                            self.next_size = pax_size(&records)?;
                        }
                        self.state = State::Header;
                        self.filled = 0;
                    }
                }
                State::Header | State::Sparse { .. } => {
                    let take = bytes.len().min(BLOCK - self.filled);
                    self.header[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
                    self.filled += take;
                    bytes = &bytes[take..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.block()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole 512-byte block arrived where a header or sparse extension was due.
    fn block(&mut self) -> io::Result<()> {
        let h = &self.header;
        if let State::Sparse { data } = self.state {
            // Byte 504 of an extension block says whether another one follows.
            self.state = if h[504] != 0 { State::Sparse { data } } else { data_state(data, None) };
            return Ok(());
        }
        if h.iter().all(|&b| b == 0) {
            // The end of the archive, for the tar crate too.
            self.state = State::Ended { trailing: 0 };
            return Ok(());
        }
        let typeflag = h[156];
        let size = parse_size(&h[124..136])?;
        let size = match typeflag {
            b'x' | b'g' | b'L' | b'K' => {
                if size > self.cap {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "a tar extension header (type {}) claims {size} bytes, more than the {} allowed",
                            typeflag as char, self.cap
                        ),
                    ));
                }
                size
            }
            // A PAX `size` applies to the entry right after the extension.
            _ => self.next_size.take().unwrap_or(size),
        };
        let pax =
            (typeflag == b'x').then(|| Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(4096)));
        if typeflag == b'S' && h[482] != 0 {
            self.state = State::Sparse { data: size };
        } else {
            self.state = data_state(size, pax);
        }
        Ok(())
    }
}

fn data_state(size: u64, pax: Option<Vec<u8>>) -> State {
    let padded = size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64);
    if padded == 0 { State::Header } else { State::Data { remaining: padded, pax, pax_len: size } }
}

impl<R: Read> Read for ExtensionCap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.inspect(&buf[..n])?;
        Ok(n)
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A header's size field: octal digits (NUL or space padded) or GNU base-256.
fn parse_size(field: &[u8]) -> io::Result<u64> {
    if field[0] & 0x80 != 0 {
        // Base-256: the rest is a big-endian number; more than 8 bytes of it is absurd.
        let digits = &field[1..];
        let (high, low) = digits.split_at(digits.len() - 8);
        if high.iter().any(|&b| b != 0) || field[0] & 0x7f != 0 {
            return Err(invalid("a tar header's size does not fit in 64 bits".into()));
        }
        return Ok(u64::from_be_bytes(low.try_into().expect("8 bytes")));
    }
    let text: Vec<u8> = field.iter().copied().filter(|&b| b != 0 && b != b' ').collect();
    if text.is_empty() {
        return Ok(0);
    }
    let text =
        std::str::from_utf8(&text).map_err(|_| invalid("a tar header's size is not a number".into()))?;
    u64::from_str_radix(text, 8).map_err(|_| invalid(format!("a tar header's size {text:?} is not octal")))
}

/// The `size` record of PAX extension records (`<len> <key>=<value>\n` each), if any.
fn pax_size(records: &[u8]) -> io::Result<Option<u64>> {
    let mut size = None;
    let mut rest = records;
    while !rest.is_empty() {
        let Some(space) = rest.iter().position(|&b| b == b' ') else { break };
        let len: usize = std::str::from_utf8(&rest[..space]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        if len <= space || len > rest.len() {
            break;
        }
        let record = &rest[space + 1..len];
        if let Some(value) = record.strip_prefix(b"size=") {
            let value = value.strip_suffix(b"\n").unwrap_or(value);
            let text =
                std::str::from_utf8(value).map_err(|_| invalid("a PAX size is not a number".into()))?;
            size = Some(text.parse().map_err(|_| invalid(format!("a PAX size {text:?} is not a number")))?);
        }
        rest = &rest[len..];
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, typeflag: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(typeflag));
        h.set_mode(0o644);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn padded(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
        v
    }

    fn read_all_through(bytes: &[u8], cap: u64, chunk: usize) -> io::Result<Vec<String>> {
        struct Chunked<'a>(&'a [u8], usize);
        impl Read for Chunked<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.1).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut archive = tar::Archive::new(ExtensionCap::new(Chunked(bytes, chunk), cap));
        let mut names = Vec::new();
        for e in archive.entries()? {
            let mut e = e?;
            names.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
            io::copy(&mut e, &mut io::sink())?;
        }
        Ok(names)
    }

    #[test]
    fn real_archives_pass_through_unchanged_in_any_chunking() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("dir/{}", "n".repeat(300));
        for (name, data) in [("a", &b"hello"[..]), (long.as_str(), &[7u8; 1500][..]), ("empty", &[][..])] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        }
        // A PAX header with records, as Go's archive/tar writes for long names.
        b.append_pax_extensions([("path", &b"pax/named/file"[..]), ("mtime", &b"1.5"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "short", &b"abc"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        for chunk in [1, 7, 511, 512, 513, 4096] {
            let names = read_all_through(&bytes, DEFAULT_EXTENSION_CAP, chunk).unwrap();
            assert_eq!(names, ["a", long.as_str(), "empty", "pax/named/file"], "chunk {chunk}");
        }
    }

    #[test]
    fn an_extension_header_claiming_too_much_is_refused_before_it_is_read() {
        for typeflag in [b'x', b'g', b'L', b'K'] {
            let mut bytes = header("././@LongLink", typeflag, 1 << 40);
            bytes.extend(padded(b"the claimed bytes never come"));
            let err = read_all_through(&bytes, DEFAULT_EXTENSION_CAP, 4096).unwrap_err();
            assert!(err.to_string().contains("claims 1099511627776 bytes"), "{err}");
        }
    }

    #[test]
    fn a_pax_size_moves_the_next_header() {
        // A PAX header saying the next file holds 1,024 bytes although its own header
        // says 0: the guard must look for the following header after 1,024 bytes,
        // where the next extension header claims too much.
        let record = b"13 size=1024\n";
        let mut bytes = header("pax", b'x', record.len() as u64);
        bytes.extend(padded(record));
        bytes.extend(header("big", b'0', 0));
        bytes.extend(vec![0u8; 1024]);
        bytes.extend(header("././@LongLink", b'L', 1 << 30));
        let mut guard = ExtensionCap::new(&bytes[..], DEFAULT_EXTENSION_CAP);
        let err = io::copy(&mut guard, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("claims 1073741824 bytes"), "{err}");
    }

    #[test]
    fn what_follows_the_end_is_bounded() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "a", &b"x"[..]).unwrap();
        let archive = b.into_inner().unwrap();
        let mut guard = ExtensionCap::new(&archive[..], DEFAULT_EXTENSION_CAP);
        io::copy(&mut guard, &mut io::sink()).expect("a real archive and its padding");
        let mut long = archive.clone();
        long.extend(std::iter::repeat_n(0xabu8, MAX_TRAILING as usize + 1));
        let mut guard = ExtensionCap::new(&long[..], DEFAULT_EXTENSION_CAP);
        let err = io::copy(&mut guard, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("follow the end"), "{err}");
    }

    #[test]
    fn sizes_parse_in_octal_and_base_256() {
        assert_eq!(parse_size(b"00000001750\0").unwrap(), 1000);
        assert_eq!(parse_size(b"     1750 \0\0").unwrap(), 1000);
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[4..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(parse_size(&b256).unwrap(), 1 << 40);
        b256[1] = 1;
        assert!(parse_size(&b256).is_err());
        assert!(parse_size(b"0000000999x\0").is_err());
    }
}
