//! Fleet PKI, enrolment and API tokens, and the TLS configurations the hub and the agent use.
//!
//! Trust in a Flotilla fleet starts from one fleet CA ([`ca::FleetCa`]), kept in the hub's
//! replicated store. Every device generates its own key ([`device_key::DeviceKey`]) and never
//! lets it leave the device; it enrols over QUIC with a one-time enrolment token
//! ([`token::EnrolmentToken`]) that also pins the fleet CA by fingerprint, sends a CSR, and gets
//! back a certificate whose `flotilla://device/<name>` URI SAN is its identity
//! ([`identity::device_name_from_cert`]). From then on both sides authenticate each other with
//! mutual TLS ([`tls`]).
//!
//! This crate is linked by the hub and by the agent, so it stays free of async runtimes and of
//! the hub's dependencies. All crypto goes through the ring provider, passed explicitly.

pub mod ca;
pub mod device_key;
pub mod files;
pub mod identity;
pub mod pem;
pub mod tls;
pub mod token;

pub use ca::{CaError, FleetCa, HubCertificate};
pub use device_key::{DeviceKey, DeviceKeyError};
pub use files::{FileError, write_file_atomic, write_private_file};
pub use identity::{IdentityError, device_name_from_cert, hub_name_from_cert, peer_device_name};
pub use pem::PemError;
pub use tls::TlsError;
pub use token::{ApiToken, EnrolmentToken, TokenError, check_enrolment};

/// SHA-256 of `der`, the fingerprint used to pin the fleet CA in enrolment tokens.
pub fn sha256_fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
