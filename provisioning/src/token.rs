//! Enrolment tokens (a device joining the fleet) and API tokens (the CLI talking to the hub).
//!
//! # Enrolment token format
//!
//! `flotilla token create` prints one line, which the operator pastes into the agent's config:
//!
//! ```text
//! FLT1.<id>.<secret>.<ca>
//! ```
//!
//! - `FLT1`: format version; a future format gets a new prefix.
//! - `<id>`: 8 lowercase hex characters, the name of the token's record in the hub's store.
//! - `<secret>`: 32 random bytes, base64url without padding (43 characters). The hub keeps only
//!   its SHA-256 ([`EnrolmentTokenRecord::secret_sha256`]).
//! - `<ca>`: SHA-256 of the fleet CA certificate, base64url without padding (43 characters). The
//!   device has no CA yet when it enrols; it trusts the hub only if the hub presents this CA
//!   ([`crate::tls::enrolment_client_config`]).
//!
//! The separator `.` never occurs in base64url, so the four parts split unambiguously.
//!
//! # API token format
//!
//! `flt_<id>_<secret>`: `<id>` is 8 lowercase hex characters, `<secret>` 32 random bytes as 64
//! lowercase hex characters (alphanumeric only, so a double click selects the whole token). The
//! hub keeps the SHA-256 of the secret in an [`ApiTokenRecord`].
//!
//! # Why plain SHA-256
//!
//! Both secrets are 256 random bits from the system RNG, not something a person chose. Slow
//! password hashes (argon2, scrypt) exist to make guessing low-entropy passwords expensive;
//! here nothing can be guessed, and a preimage attack on SHA-256 is out of reach, so one fast
//! hash protects a leaked store as well as a slow one would, and costs the hub nothing per request.
//! The hash is over the 32 decoded secret bytes.
//!
//! Neither token type implements `Display`, and their `Debug` never shows the secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use shared_proto::Timestamp;
use shared_proto::store::{ApiTokenRecord, EnrolmentTokenRecord};
use shared_proto::wire::EnrolRefusal;
use std::fmt;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Version prefix of enrolment tokens.
pub const ENROLMENT_TOKEN_PREFIX: &str = "FLT1";
/// Prefix of API tokens.
pub const API_TOKEN_PREFIX: &str = "flt";

const ID_LEN: usize = 8;
const SECRET_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "enrolment token is malformed ({problem}): expected FLT1.<id>.<secret>.<ca>; copy the whole line printed by `flotilla token create`"
    )]
    Malformed { problem: &'static str },
    #[error(
        "enrolment token has an unsupported version: this agent understands FLT1 tokens; create a token with a matching hub or upgrade the agent"
    )]
    UnsupportedVersion,
    #[error(
        "enrolment token is not valid (unknown id or wrong secret); check it or create a new one with `flotilla token create`"
    )]
    InvalidToken,
    #[error("enrolment token {id} expired at {expired_at}; create a new one with `flotilla token create`")]
    Expired { id: String, expired_at: Timestamp },
    #[error(
        "enrolment token {id} is used up ({max_uses} of {max_uses} uses); create a new one with `flotilla token create`"
    )]
    UsedUp { id: String, max_uses: u32 },
    #[error(
        "api token is malformed ({problem}): expected flt_<id>_<secret>; create one with `flotilla api-token create`"
    )]
    MalformedApiToken { problem: &'static str },
    #[error("the system random number generator failed")]
    Random,
}

impl TokenError {
    /// What to tell an enrolling device.
    pub fn refusal(&self) -> EnrolRefusal {
        match self {
            TokenError::Malformed { .. }
            | TokenError::UnsupportedVersion
            | TokenError::InvalidToken
            | TokenError::MalformedApiToken { .. } => EnrolRefusal::InvalidToken,
            TokenError::Expired { .. } => EnrolRefusal::Expired,
            TokenError::UsedUp { .. } => EnrolRefusal::UsedUp,
            TokenError::Random => EnrolRefusal::Unavailable,
        }
    }
}

/// An enrolment token, secret included. Created by the hub, parsed by the agent and the hub.
pub struct EnrolmentToken {
    id: String,
    secret: Zeroizing<[u8; SECRET_LEN]>,
    ca_fingerprint: [u8; 32],
}

impl fmt::Debug for EnrolmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrolmentToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ca_fingerprint", &hex::encode(self.ca_fingerprint))
            .finish()
    }
}

impl EnrolmentToken {
    /// A new token for the CA with this fingerprint, and the hex SHA-256 of its secret for the
    /// hub's [`EnrolmentTokenRecord`].
    pub fn generate(ca_fingerprint: [u8; 32]) -> Result<(EnrolmentToken, String), TokenError> {
        let (id, secret) = random_id_and_secret()?;
        let token = EnrolmentToken { id, secret, ca_fingerprint };
        let hash = token.secret_sha256_hex();
        Ok((token, hash))
    }

    /// Parses the line printed by `flotilla token create`; surrounding whitespace is ignored.
    /// Errors never echo the input, which may hold a secret.
    pub fn parse(s: &str) -> Result<EnrolmentToken, TokenError> {
        let malformed = |problem| TokenError::Malformed { problem };
        let mut parts = s.trim().split('.');
        let version = parts.next().unwrap_or_default();
        if version != ENROLMENT_TOKEN_PREFIX {
            if version.starts_with("FLT") && version.len() <= 8 && s.trim().split('.').count() >= 2 {
                return Err(TokenError::UnsupportedVersion);
            }
            return Err(malformed("it does not start with FLT1"));
        }
        let (Some(id), Some(secret), Some(ca), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("it must have exactly four parts separated by '.'"));
        };
        if !is_token_id(id) {
            return Err(malformed("the id must be 8 lowercase hex characters"));
        }
        let secret = decode_b64_32(secret).ok_or(malformed("the secret must be 32 bytes of base64url"))?;
        let ca_fingerprint =
            *decode_b64_32(ca).ok_or(malformed("the CA fingerprint must be 32 bytes of base64url"))?;
        Ok(EnrolmentToken { id: id.to_owned(), secret, ca_fingerprint })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// SHA-256 of the fleet CA certificate the hub must present.
    pub fn ca_fingerprint(&self) -> [u8; 32] {
        self.ca_fingerprint
    }

    /// The full token, secret included: print it once to the operator, never log it.
    pub fn to_token_string(&self) -> String {
        format!(
            "{ENROLMENT_TOKEN_PREFIX}.{}.{}.{}",
            self.id,
            URL_SAFE_NO_PAD.encode(*self.secret),
            URL_SAFE_NO_PAD.encode(self.ca_fingerprint)
        )
    }

    /// Hex SHA-256 of the secret, as [`EnrolmentTokenRecord::secret_sha256`] stores it.
    pub fn secret_sha256_hex(&self) -> String {
        hex::encode(crate::sha256_fingerprint(&*self.secret))
    }

    /// Whether the secret hashes to `record_sha256_hex`, compared in constant time.
    pub fn verify_secret(&self, record_sha256_hex: &str) -> bool {
        secret_matches(&self.secret, record_sha256_hex)
    }
}

/// Decides whether `token` may enrol a device now. Checks, in this order, that the secret is
/// right (so someone without it learns nothing about the token), that it has not expired, and
/// that it has uses left. The hub looks `record` up by [`EnrolmentToken::id`] and, on success,
/// increments `n_used` in the same store write that creates the device.
pub fn check_enrolment(
    record: &EnrolmentTokenRecord,
    token: &EnrolmentToken,
    now: Timestamp,
) -> Result<(), TokenError> {
    check_secret(record, token)?;
    if now >= record.expires_at {
        return Err(TokenError::Expired { id: record.id.clone(), expired_at: record.expires_at });
    }
    if let Some(max_uses) = record.max_uses
        && record.n_used >= max_uses
    {
        return Err(TokenError::UsedUp { id: record.id.clone(), max_uses });
    }
    Ok(())
}

/// Checks only that `token` is `record`'s and carries its secret: enough to hand a
/// device the certificate of an enrolment that already happened (its reply was lost),
/// whatever the token's expiry and uses say now.
pub fn check_secret(record: &EnrolmentTokenRecord, token: &EnrolmentToken) -> Result<(), TokenError> {
    if record.id != token.id || !token.verify_secret(&record.secret_sha256) {
        return Err(TokenError::InvalidToken);
    }
    Ok(())
}

/// An API bearer token, secret included.
pub struct ApiToken {
    id: String,
    secret: Zeroizing<[u8; SECRET_LEN]>,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

impl ApiToken {
    /// A new token and the hex SHA-256 of its secret for the hub's [`ApiTokenRecord`].
    pub fn generate() -> Result<(ApiToken, String), TokenError> {
        let (id, secret) = random_id_and_secret()?;
        let token = ApiToken { id, secret };
        let hash = token.secret_sha256_hex();
        Ok((token, hash))
    }

    /// Parses `flt_<id>_<secret>` (without any `Bearer ` prefix). Errors never echo the input.
    pub fn parse(s: &str) -> Result<ApiToken, TokenError> {
        let malformed = |problem| TokenError::MalformedApiToken { problem };
        let mut parts = s.trim().split('_');
        if parts.next() != Some(API_TOKEN_PREFIX) {
            return Err(malformed("it does not start with flt_"));
        }
        let (Some(id), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("it must have exactly three parts separated by '_'"));
        };
        if !is_token_id(id) {
            return Err(malformed("the id must be 8 lowercase hex characters"));
        }
        if secret.len() != 2 * SECRET_LEN || !secret.bytes().all(is_lower_hex) {
            return Err(malformed("the secret must be 64 lowercase hex characters"));
        }
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        hex::decode_to_slice(secret, &mut *bytes)
            .map_err(|_| malformed("the secret must be 64 lowercase hex characters"))?;
        Ok(ApiToken { id: id.to_owned(), secret: bytes })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The full token, secret included: print it once to the operator, never log it.
    pub fn to_token_string(&self) -> String {
        format!("{API_TOKEN_PREFIX}_{}_{}", self.id, hex::encode(*self.secret))
    }

    /// Hex SHA-256 of the secret, as [`ApiTokenRecord::secret_sha256`] stores it.
    pub fn secret_sha256_hex(&self) -> String {
        hex::encode(crate::sha256_fingerprint(&*self.secret))
    }

    /// Whether the secret hashes to `record_sha256_hex`, compared in constant time.
    pub fn verify_secret(&self, record_sha256_hex: &str) -> bool {
        secret_matches(&self.secret, record_sha256_hex)
    }

    /// Whether this token is the one `record` describes: same id and matching secret.
    pub fn verify(&self, record: &ApiTokenRecord) -> bool {
        record.id == self.id && self.verify_secret(&record.secret_sha256)
    }
}

fn random_id_and_secret() -> Result<(String, Zeroizing<[u8; SECRET_LEN]>), TokenError> {
    let rng = SystemRandom::new();
    let mut id = [0u8; ID_LEN / 2];
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    rng.fill(&mut id).map_err(|_| TokenError::Random)?;
    rng.fill(&mut *secret).map_err(|_| TokenError::Random)?;
    Ok((hex::encode(id), secret))
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_token_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(is_lower_hex)
}

fn decode_b64_32(s: &str) -> Option<Zeroizing<[u8; 32]>> {
    // 32 bytes are exactly 43 base64 characters without padding.
    if s.len() != 43 {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    let n = URL_SAFE_NO_PAD.decode_slice(s, &mut *out).ok()?;
    (n == 32).then_some(out)
}

fn secret_matches(secret: &[u8; SECRET_LEN], record_sha256_hex: &str) -> bool {
    let mut expected = [0u8; 32];
    if hex::decode_to_slice(record_sha256_hex, &mut expected).is_err() {
        return false;
    }
    let actual = crate::sha256_fingerprint(secret);
    actual.ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const CA: [u8; 32] = [7u8; 32];

    fn record(token: &EnrolmentToken, hash: &str) -> EnrolmentTokenRecord {
        EnrolmentTokenRecord {
            id: token.id().to_owned(),
            secret_sha256: hash.to_owned(),
            created_at: Timestamp(1_000),
            expires_at: Timestamp(10_000),
            max_uses: Some(2),
            n_used: 0,
            labels: BTreeMap::new(),
            site: String::new(),
            description: String::new(),
            device_labels: Default::default(),
        }
    }

    #[test]
    fn enrolment_token_round_trips() {
        let (token, hash) = EnrolmentToken::generate(CA).expect("token");
        let s = token.to_token_string();
        let parts: Vec<&str> = s.split('.').collect();
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert_eq!(parts[0], "FLT1");
        assert_eq!((parts[1].len(), parts[2].len(), parts[3].len()), (8, 43, 43));
        let parsed = EnrolmentToken::parse(&format!("  {s}\n")).expect("parses");
        assert_eq!(parsed.id(), token.id());
        assert_eq!(parsed.ca_fingerprint(), CA);
        assert_eq!(parsed.to_token_string(), s);
        assert_eq!(parsed.secret_sha256_hex(), hash);
        let (other, _) = EnrolmentToken::generate(CA).expect("token");
        assert_ne!(other.to_token_string(), s);
    }

    #[test]
    fn malformed_enrolment_tokens_say_what_is_wrong() {
        let (token, _) = EnrolmentToken::generate(CA).expect("token");
        let good = token.to_token_string();
        let parts: Vec<&str> = good.split('.').collect();
        let secret = parts[2];
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "does not start with FLT1"),
            ("hello".into(), "does not start with FLT1"),
            (format!("flt1.{}.{}.{}", parts[1], secret, parts[3]), "does not start with FLT1"),
            (format!("FLT1.{}.{}", parts[1], secret), "exactly four parts"),
            (format!("{good}.extra"), "exactly four parts"),
            (format!("FLT1.{}.{}.{}", "ABCDEF01", secret, parts[3]), "8 lowercase hex"),
            (format!("FLT1.{}.{}.{}", "abc", secret, parts[3]), "8 lowercase hex"),
            (format!("FLT1.{}.{}.{}", parts[1], &secret[..42], parts[3]), "secret must be 32 bytes"),
            (format!("FLT1.{}.{}!.{}", parts[1], &secret[..42], parts[3]), "secret must be 32 bytes"),
            (format!("FLT1.{}.{}+.{}", parts[1], &secret[..42], parts[3]), "secret must be 32 bytes"),
            (format!("FLT1.{}.{}.{}", parts[1], secret, &parts[3][..40]), "CA fingerprint must be 32 bytes"),
        ];
        for (input, want) in cases {
            let err = EnrolmentToken::parse(&input).expect_err(&input);
            let msg = err.to_string();
            assert!(matches!(err, TokenError::Malformed { .. }), "{input}: {msg}");
            assert!(msg.contains(want), "{input}: {msg}");
            assert!(msg.contains("expected FLT1.<id>.<secret>.<ca>"), "{msg}");
            assert!(!msg.contains(secret), "error echoes the secret: {msg}");
        }
        let future = format!("FLT2.{}.{}.{}", parts[1], secret, parts[3]);
        assert!(matches!(EnrolmentToken::parse(&future), Err(TokenError::UnsupportedVersion)));
    }

    #[test]
    fn enrolment_secret_verifies_only_against_its_own_hash() {
        let (token, hash) = EnrolmentToken::generate(CA).expect("token");
        let (_, other_hash) = EnrolmentToken::generate(CA).expect("token");
        assert!(token.verify_secret(&hash));
        assert!(!token.verify_secret(&other_hash));
        assert!(!token.verify_secret(""));
        assert!(!token.verify_secret("zz"));
        assert!(!token.verify_secret(&hash[..62]));
    }

    #[test]
    fn check_enrolment_accepts_expires_and_uses_up() {
        let (token, hash) = EnrolmentToken::generate(CA).expect("token");
        let mut rec = record(&token, &hash);
        check_enrolment(&rec, &token, Timestamp(9_999)).expect("valid");

        let err = check_enrolment(&rec, &token, Timestamp(10_000)).expect_err("expired");
        assert!(matches!(err, TokenError::Expired { expired_at: Timestamp(10_000), .. }));
        assert_eq!(err.refusal(), EnrolRefusal::Expired);
        let msg = err.to_string();
        assert!(
            msg.contains(&Timestamp(10_000).to_string()) && msg.contains("flotilla token create"),
            "{msg}"
        );

        rec.n_used = 2;
        let err = check_enrolment(&rec, &token, Timestamp(5_000)).expect_err("used up");
        assert!(matches!(err, TokenError::UsedUp { max_uses: 2, .. }));
        assert_eq!(err.refusal(), EnrolRefusal::UsedUp);

        rec.max_uses = None;
        rec.n_used = 1_000;
        check_enrolment(&rec, &token, Timestamp(5_000)).expect("unlimited uses");
    }

    #[test]
    fn check_enrolment_refuses_a_wrong_secret_before_anything_else() {
        let (token, _) = EnrolmentToken::generate(CA).expect("token");
        let (_, other_hash) = EnrolmentToken::generate(CA).expect("token");
        let mut rec = record(&token, &other_hash);
        rec.n_used = 5;
        // Expired and used up too, but without the secret the caller learns only "invalid".
        let err = check_enrolment(&rec, &token, Timestamp(20_000)).expect_err("wrong secret");
        assert!(matches!(err, TokenError::InvalidToken));
        assert_eq!(err.refusal(), EnrolRefusal::InvalidToken);

        let (token2, hash2) = EnrolmentToken::generate(CA).expect("token");
        let mut rec2 = record(&token2, &hash2);
        rec2.id = "00000000".into();
        assert!(matches!(check_enrolment(&rec2, &token2, Timestamp(5_000)), Err(TokenError::InvalidToken)));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let (token, _) = EnrolmentToken::generate(CA).expect("token");
        let s = token.to_token_string();
        let secret = s.split('.').nth(2).expect("secret part");
        let debug = format!("{token:?} {:?}", EnrolmentToken::parse(&s).expect("parses"));
        assert!(!debug.contains(secret), "{debug}");
        assert!(debug.contains(token.id()) && debug.contains("redacted"), "{debug}");

        let (api, _) = ApiToken::generate().expect("token");
        let s = api.to_token_string();
        let secret = s.rsplit('_').next().expect("secret part");
        let debug = format!("{api:?} {:?}", ApiToken::parse(&s).expect("parses"));
        assert!(!debug.contains(secret) && !debug.contains(&secret[..16]), "{debug}");
        assert!(debug.contains(api.id()), "{debug}");
    }

    #[test]
    fn api_token_round_trips_and_verifies() {
        let (token, hash) = ApiToken::generate().expect("token");
        let s = token.to_token_string();
        assert!(s.starts_with("flt_") && s.len() == 4 + 8 + 1 + 64, "{s}");
        assert!(s.bytes().all(|b| b == b'_' || b.is_ascii_alphanumeric()));
        let parsed = ApiToken::parse(&s).expect("parses");
        assert_eq!(parsed.id(), token.id());
        assert!(parsed.verify_secret(&hash));
        let rec = ApiTokenRecord {
            id: token.id().to_owned(),
            secret_sha256: hash.clone(),
            role: shared_proto::store::Role::Admin,
            created_at: Timestamp(0),
            description: String::new(),
            expires_at: None,
            sites: vec![],
            namespaces: vec![],
        };
        assert!(parsed.verify(&rec));
        let (other, other_hash) = ApiToken::generate().expect("token");
        assert!(!other.verify(&rec));
        assert!(!parsed.verify_secret(&other_hash));
        let renamed = ApiTokenRecord { id: other.id().to_owned(), ..rec };
        assert!(!parsed.verify(&renamed));
    }

    #[test]
    fn malformed_api_tokens_say_what_is_wrong() {
        let (token, _) = ApiToken::generate().expect("token");
        let s = token.to_token_string();
        let secret = &s[13..];
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "does not start with flt_"),
            (format!("FLT_{}", &s[4..]), "does not start with flt_"),
            (format!("flt_{}", token.id()), "exactly three parts"),
            (format!("{s}_x"), "exactly three parts"),
            (format!("flt_xyz_{secret}"), "8 lowercase hex"),
            (format!("flt_{}_{}", token.id(), &secret[..63]), "64 lowercase hex"),
            (format!("flt_{}_{}", token.id(), secret.to_uppercase()), "64 lowercase hex"),
        ];
        for (input, want) in cases {
            let err = ApiToken::parse(&input).expect_err(&input);
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains("expected flt_<id>_<secret>"), "{input}: {msg}");
            assert!(!msg.contains(&secret[..16]), "error echoes the secret: {msg}");
        }
    }
}
