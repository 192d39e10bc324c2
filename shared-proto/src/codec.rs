//! Versioned postcard envelopes for frames and records.
//!
//! Layout: `varint(version)` then the postcard body. Readers look at the version
//! before decoding the body, so an unknown version is a clear error rather than
//! garbage, and old records stay decodable after the format moves on.
//!
//! Evolving a format (postcard is positional, so there is no "unknown field"):
//! - appending a variant to an enum keeps every older body decodable as is; a writer
//!   talking to an older peer maps the new variant to one the peer knows;
//! - changing a struct needs a frozen copy of its previous shape in a `v<N>` module
//!   and a conversion, chosen by the version in front of the body;
//! - readers accept the current version and the one before it
//!   ([`decode_versioned_range`]), so a hub and an agent one version apart, or a hub
//!   reading a log written by its predecessor, understand each other.

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
    decode_versioned_range(version, version, what, bytes, |_, body| decode_body(what, body)).map(|(_, v)| v)
}

/// Decodes a value whose version lies in `min..=max`; returns the version too, so
/// the caller can pick the shape that version used.
pub fn decode_versioned_range<T, F>(
    min: u32,
    max: u32,
    what: &'static str,
    bytes: &[u8],
    decode_body: F,
) -> Result<(u32, T), CodecError>
where
    F: FnOnce(u32, &[u8]) -> Result<T, CodecError>,
{
    let (found, body) = peek_version(bytes, what)?;
    if !(min..=max).contains(&found) {
        return Err(CodecError::UnsupportedVersion { found, supported: max });
    }
    Ok((found, decode_body(found, body)?))
}

/// Decodes a whole postcard body: trailing bytes are an error.
pub fn decode_body<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, CodecError> {
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
