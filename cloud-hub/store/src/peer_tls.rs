//! Mutual TLS between hubs. Every hub presents a certificate from the fleet CA that names it
//! `hub-<node id>.raft.flotilla.internal` (see [`peer_name`]), and requires the same of its
//! peers:
//! - as a client, it dials `https://hub-<target>.raft.flotilla.internal` with that name
//!   resolved to the target's raft address, so the ordinary certificate name check proves it
//!   reached the node it meant to (a stale address now used by another hub fails the
//!   handshake);
//! - as a server, it requires a client certificate chaining to the fleet CA *and* carrying
//!   such a name. Devices hold certificates from the same CA, but the CA never puts a raft
//!   name in theirs (it decides every name itself), so a device cannot talk Raft.
//!
//! The hub builds both rustls configurations (it owns the fleet CA and renews the hub's
//! certificate without a restart); this crate only checks names.

use crate::types::NodeId;
use std::fmt;
use std::sync::Arc;

/// The DNS-name suffix of a hub's Raft identity. `.internal` is reserved for private use, so
/// it can never be a public name.
pub const PEER_NAME_SUFFIX: &str = ".raft.flotilla.internal";

/// The name hub `id` carries in its certificate and is dialled by.
pub fn peer_name(id: NodeId) -> String {
    format!("hub-{id}{PEER_NAME_SUFFIX}")
}

/// The node ids whose raft names the certificate carries (none for a device's certificate).
pub fn peer_ids(cert_der: &[u8]) -> Vec<NodeId> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => dns
                .strip_prefix("hub-")
                .and_then(|rest| rest.strip_suffix(PEER_NAME_SUFFIX))
                .and_then(|id| id.parse().ok()),
            _ => None,
        })
        .collect()
}

/// This hub's side of mutual TLS with its peers.
#[derive(Clone)]
pub struct PeerTls {
    /// Presents this hub's certificate and requires a client certificate that chains to the
    /// fleet CA (the store then also requires a raft name in it).
    pub server: Arc<rustls::ServerConfig>,
    /// Presents this hub's certificate as a client certificate and verifies peers against the
    /// fleet CA, by their raft names.
    pub client: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(names: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn raft_names_are_read_from_the_certificate() {
        assert_eq!(peer_name(7), "hub-7.raft.flotilla.internal");
        assert_eq!(peer_ids(&cert_with(&["localhost", &peer_name(3)])), vec![3]);
        assert!(peer_ids(&cert_with(&["localhost", "hub-x.raft.flotilla.internal"])).is_empty());
        assert!(peer_ids(&cert_with(&["hub-3.raft.flotilla.internal.evil"])).is_empty());
        assert!(peer_ids(b"not a certificate").is_empty());
    }
}
