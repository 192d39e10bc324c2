//! Content digests (`sha256:<hex>`) and readers/writers that hash and verify as bytes stream.

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("invalid digest {input:?}: {reason}")]
    Malformed { input: String, reason: &'static str },
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("content is {actual} bytes but {expected} were expected")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("content is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("reading content: {0}")]
    Io(#[from] io::Error),
}

/// A sha256 content digest, the only algorithm Flotilla accepts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub const PREFIX: &'static str = "sha256:";

    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let malformed = |reason| DigestError::Malformed { input: truncate(s, 80), reason };
        let hex_part = match s.split_once(':') {
            Some(("sha256", rest)) => rest,
            Some(_) => return Err(malformed("only sha256 digests are supported")),
            None => return Err(malformed("expected sha256:<64 lowercase hex digits>")),
        };
        Digest::from_hex(hex_part).ok_or_else(|| malformed("expected sha256:<64 lowercase hex digits>"))
    }

    /// Parses the bare hex part, as in blob file names. Upper case is refused so that
    /// one digest has exactly one spelling (and one file name).
    pub fn from_hex(hex_part: &str) -> Option<Digest> {
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).ok()?;
        Some(Digest(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        let mut hasher = Hasher::new();
        hasher.update(data);
        hasher.finish().0
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits without the algorithm, as used for blob file names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((idx, _)) => format!("{}…", &s[..idx]),
        None => s.to_string(),
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Digest::PREFIX, self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 with a byte count.
#[derive(Clone)]
pub struct Hasher {
    context: Context,
    n_bytes: u64,
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher { context: Context::new(&SHA256), n_bytes: 0 }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.context.update(data);
        self.n_bytes += data.len() as u64;
    }

    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    pub fn finish(self) -> (Digest, u64) {
        let out = self.context.finish();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(out.as_ref());
        (Digest(bytes), self.n_bytes)
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new()
    }
}

/// A writer that hashes everything written through it.
pub struct DigestWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> DigestWriter<W> {
    pub fn new(inner: W) -> Self {
        DigestWriter { inner, hasher: Hasher::new() }
    }

    pub fn n_bytes(&self) -> u64 {
        self.hasher.n_bytes()
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, the digest of what went through and its length.
    pub fn finish(self) -> (W, Digest, u64) {
        let (digest, n_bytes) = self.hasher.finish();
        (self.inner, digest, n_bytes)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what it yields and refuses to yield more than the expected
/// size, so that a lying or endless source cannot make a consumer read without bound.
/// Call [`VerifyingReader::finish`] once the consumer is done: it reads whatever the
/// consumer left (a tar reader stops at the end-of-archive blocks) and checks the size
/// and the digest. Until then nothing read may be trusted.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Hasher,
    expected: Digest,
    expected_size: u64,
    overlong: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, expected_size: u64) -> Self {
        VerifyingReader { inner, hasher: Hasher::new(), expected, expected_size, overlong: false }
    }

    pub fn n_bytes(&self) -> u64 {
        self.hasher.n_bytes()
    }

    pub fn finish(mut self) -> Result<R, DigestError> {
        let drained = io::copy(&mut self, &mut io::sink());
        if self.overlong {
            return Err(DigestError::TooLarge { limit: self.expected_size });
        }
        drained?;
        let (actual, n_bytes) = self.hasher.finish();
        if n_bytes != self.expected_size {
            return Err(DigestError::SizeMismatch { expected: self.expected_size, actual: n_bytes });
        }
        if actual != self.expected {
            return Err(DigestError::Mismatch { expected: self.expected, actual });
        }
        Ok(self.inner)
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.expected_size - self.hasher.n_bytes();
        if remaining == 0 {
            // Probe for one more byte: a source longer than announced is an error, not
            // silently truncated content.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.overlong = true;
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("content is longer than the expected {} bytes", self.expected_size),
                    ))
                }
            };
        }
        let max = buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads `reader` to its end and checks it is exactly `expected_size` bytes hashing to
/// `expected`.
pub fn verify_reader(reader: impl Read, expected: &Digest, expected_size: u64) -> Result<(), DigestError> {
    VerifyingReader::new(reader, *expected, expected_size).finish().map(drop)
}

/// Digest and length of everything `reader` yields, refusing more than `max_size` bytes.
pub fn digest_reader(reader: impl Read, max_size: u64) -> Result<(Digest, u64), DigestError> {
    let mut writer = DigestWriter::new(io::sink());
    let n = io::copy(&mut reader.take(max_size.saturating_add(1)), &mut writer)?;
    if n > max_size {
        return Err(DigestError::TooLarge { limit: max_size });
    }
    let (_, digest, n_bytes) = writer.finish();
    Ok((digest, n_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::of(b""));
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&format!("\"{EMPTY}\"")).unwrap(), d);
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "sha256:",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 ",
            "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(matches!(Digest::parse(bad), Err(DigestError::Malformed { .. })), "{bad:?} accepted");
        }
        let err = serde_json::from_str::<Digest>("\"md5:abc\"").unwrap_err().to_string();
        assert!(err.contains("only sha256"), "{err}");
    }

    #[test]
    fn verify_ok_and_mismatch() {
        let data = b"hello flotilla";
        let d = Digest::of(data);
        verify_reader(&data[..], &d, data.len() as u64).unwrap();

        let err = verify_reader(&b"hello flotillA"[..], &d, data.len() as u64).unwrap_err();
        assert!(matches!(err, DigestError::Mismatch { .. }), "{err}");
        let err = verify_reader(&data[..5], &d, data.len() as u64).unwrap_err();
        assert!(matches!(err, DigestError::SizeMismatch { expected: 14, actual: 5 }), "{err}");
        // Longer than announced fails while reading, before anything is hashed past the size.
        let err = verify_reader(&b"hello flotilla!"[..], &d, data.len() as u64).unwrap_err();
        assert!(matches!(err, DigestError::TooLarge { limit: 14 }), "{err}");
    }

    #[test]
    fn streaming_writer_matches_one_shot() {
        let mut w = DigestWriter::new(Vec::new());
        for chunk in [&b"hello "[..], b"flo", b"tilla"] {
            w.write_all(chunk).unwrap();
        }
        let (bytes, d, n) = w.finish();
        assert_eq!(bytes, b"hello flotilla");
        assert_eq!((d, n), (Digest::of(b"hello flotilla"), 14));
        assert_eq!(digest_reader(&bytes[..], 14).unwrap(), (d, 14));
        assert!(matches!(digest_reader(&bytes[..], 13), Err(DigestError::TooLarge { limit: 13 })));
    }
}
