//! Versioned postcard envelopes for frames and records.
//!
//! Layout: `varint(version)` then the postcard body. Readers look at the version
//! before decoding the body, so an unknown version is a clear error rather than
//! garbage, and old records stay decodable after the format moves on.

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("malformed {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("{what} has {extra} trailing bytes")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
}

/// Encodes `value` behind `version`.
pub fn encode_versioned<T: Serialize>(
    version: u32,
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, CodecError> {
    let mut out = postcard::to_stdvec(&version).map_err(|source| CodecError::Encode { what, source })?;
    postcard::to_io(value, &mut out).map_err(|source| CodecError::Encode { what, source })?;
    Ok(out)
}

/// Reads the version in front of an encoded value.
pub fn peek_version<'a>(bytes: &'a [u8], what: &'static str) -> Result<(u32, &'a [u8]), CodecError> {
    postcard::take_from_bytes::<u32>(bytes).map_err(|source| CodecError::Malformed { what, source })
}

/// Decodes a value encoded with [`encode_versioned`] at exactly `version`.
pub fn decode_versioned<T: DeserializeOwned>(
    version: u32,
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    let (found, body) = peek_version(bytes, what)?;
    if found != version {
        return Err(CodecError::UnsupportedVersion { found, supported: version });
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|source| CodecError::Malformed { what, source })?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes { what, extra: rest.len() });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_mismatch() {
        let bytes = encode_versioned(3, "test", &("hello", 7u16)).unwrap();
        assert_eq!(bytes[0], 3);
        let v: (String, u16) = decode_versioned(3, "test", &bytes).unwrap();
        assert_eq!(v, ("hello".to_string(), 7));
        assert!(matches!(
            decode_versioned::<(String, u16)>(4, "test", &bytes),
            Err(CodecError::UnsupportedVersion { found: 3, supported: 4 })
        ));
    }

    #[test]
    fn truncated_and_trailing_bytes_are_errors() {
        let mut bytes = encode_versioned(1, "test", &("hello", 7u16)).unwrap();
        assert!(decode_versioned::<(String, u16)>(1, "test", &bytes[..4]).is_err());
        bytes.push(0);
        assert!(matches!(
            decode_versioned::<(String, u16)>(1, "test", &bytes),
            Err(CodecError::TrailingBytes { extra: 1, .. })
        ));
    }
}
