//! The hub as one of several: its Raft identity on disk, join tokens, and the joining
//! hub's side of `flotilla hub join`.
//!
//! **Identity.** Hubs talk Raft over mutual TLS with certificates from the fleet CA that
//! carry their raft name (`hub_store::peer_name`). The CA lives in the store, which a hub
//! cannot read before Raft runs, so each clustered hub keeps its current certificate, key
//! and trusted CAs in `<data_dir>/hub-identity.pem` (mode 0600). The hub writes it
//! whenever it issues itself a certificate (`sync/pki.rs`) and starts Raft from it.
//!
//! **Join tokens** are signed, not stored: `flj1.<CA sha256>.<expiry ms>.<nonce>.<HMAC>`,
//! HMAC-SHA256 under a key derived from the hub key that every hub of the cluster shares,
//! so any hub checks one without a store read. A token is valid until it expires (an hour
//! by default), for any number of joins, like a kubeadm bootstrap token; it carries the
//! CA's fingerprint so the joining hub can authenticate the hub it asks. Rotating the hub
//! key is the way to void every token at once.
//!
//! **Joining** takes two calls to any hub's API, both authenticated by the token:
//! 1. `POST /api/v1/cluster/join` gives the new hub a node id, a certificate for its raft
//!    name and the cluster's hub key (which opens the sealed fleet CA and Secrets), over TLS
//!    pinned to the CA fingerprint in the token. The new hub writes them to its data
//!    directory and starts Raft, uninitialised.
//! 2. `POST /api/v1/cluster/members` then asks the cluster to add it: the leader adds it as
//!    a learner, streams it the log or a snapshot, and promotes it to voter.
//!
//! **Static peers** are the other way to form a cluster, for installs that provision every
//! hub at once (configuration management, images): `flotilla hub bootstrap --member
//! 1=HOST:PORT --member 2=… --out DIR` makes the fleet CA and hub key and writes one data
//! directory per member, each with its Raft identity, the hub key, the member list
//! (`node.json`) and the fleet CA sealed with the hub key ([`FOUNDING_CA_FILE`]). Each hub
//! then starts with `hub serve --raft-listen`; they form the cluster together, and the
//! first leader writes the fleet CA into the store.

use anyhow::{Context, bail};
use provisioning::tls::HubTls;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use shared_proto::Timestamp;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::sealing::HubKey;

/// The hub's Raft identity: its certificate chain and key, then the trusted CAs.
pub const IDENTITY_FILE: &str = "hub-identity.pem";
/// The node id and raft address this data directory belongs to.
pub const NODE_FILE: &str = "node.json";
/// The fleet CA made by `hub bootstrap`, sealed with the hub key, until the store has it.
pub const FOUNDING_CA_FILE: &str = "founding-ca.sealed";
/// The first admin token's record (hashed) made by `hub bootstrap`, until the store has it.
pub const FOUNDING_TOKEN_FILE: &str = "founding-token";
/// Life of the Raft certificates `hub bootstrap` writes: the hubs must start within it
/// (they replace them with ones of their configured lifetime once running).
pub const STATIC_CERT_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// Default life of a join token.
pub const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(3600);
/// Longest life a join token may be given.
pub const MAX_JOIN_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Longest join token accepted (before parsing).
const MAX_TOKEN_LEN: usize = 512;
const TOKEN_PREFIX: &str = "flj1";

/// What a data directory of a clustered hub records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRecord {
    pub node_id: u64,
    /// The address the other hubs reach this one's Raft listener at.
    pub raft_addr: String,
    /// Set while a join through this hub URL is under way (`None` for a founding hub and
    /// once the cluster has added this one): until then the hub must join again rather
    /// than found a cluster of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_via: Option<String>,
    /// While joining: the members the cluster named, so a retried join waits to be added
    /// instead of forming a cluster alone. Without `joined_via`: the static peers the
    /// cluster is formed with (`hub bootstrap`), this hub among them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub join_members: BTreeMap<u64, String>,
}

/// `id=host:port` of `hub bootstrap --member`.
pub fn parse_member(s: &str) -> anyhow::Result<(u64, String)> {
    let (id, addr) = s.split_once('=').context("a member is ID=HOST:PORT, e.g. 1=hub-1.example:7450")?;
    let id: u64 = id.trim().parse().with_context(|| format!("{id:?} is not a node id"))?;
    if id == 0 {
        bail!("node ids start at 1");
    }
    let addr = addr.trim();
    let ok = addr.len() <= 255
        && addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        bail!("{addr:?} is not HOST:PORT");
    }
    Ok((id, addr.to_string()))
}

/// `flotilla hub bootstrap`: a new fleet CA and hub key, and one data directory per member
/// under `out` (`hub-<id>`), ready for `hub serve`. Returns what to run next.
pub fn bootstrap(out: &Path, members: &BTreeMap<u64, String>) -> anyhow::Result<String> {
    if members.is_empty() {
        bail!("name the cluster's hubs with --member ID=HOST:PORT (1, 3 or 5 of them)");
    }
    if members.len() > 7 {
        bail!("{} members: a cluster has 1, 3 or 5 hubs (7 at most)", members.len());
    }
    for id in members.keys() {
        let dir = out.join(format!("hub-{id}"));
        if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
            bail!("{} is not empty: bootstrap into a new directory", dir.display());
        }
    }
    let ca = provisioning::ca::FleetCa::generate("Flotilla fleet CA")?;
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let mut key_bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key_bytes)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let key = HubKey::from_bytes(&key_bytes);
    let sealed = shared_proto::store::Object::FleetCa(key.seal_ca(ca.to_record(now))?).encode()?;
    // The first admin token, so that the CLI works against whichever hub leads first.
    let (secret, record) = crate::api::tokens::new_api_token(
        shared_proto::store::Role::Admin,
        "created by hub bootstrap".into(),
        now,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let token_record = shared_proto::store::Object::ApiToken(record).encode()?;
    let ca_pem = provisioning::pem::encode_cert(ca.cert_der());
    let mut report = format!(
        "a cluster of {} hubs with fleet CA {}; start each with its directory:",
        members.len(),
        ca.fingerprint()
    );
    for (id, addr) in members {
        let dir = out.join(format!("hub-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        provisioning::files::write_private_file(&dir.join(crate::sealing::KEY_FILE), &key_bytes)?;
        let (chain, cert_key) = raft_certificate(&ca, *id, STATIC_CERT_LIFETIME)?;
        save_identity(&dir, &chain, &cert_key, &[ca.cert_der().clone()])?;
        provisioning::files::write_private_file(&dir.join(FOUNDING_CA_FILE), &sealed)?;
        provisioning::files::write_private_file(&dir.join(FOUNDING_TOKEN_FILE), &token_record)?;
        // The hub rewrites it with its own addresses when it starts (keeping the token).
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let context = shared_proto::config::CliContext {
            hub: format!("https://{host}:7440"),
            quic: format!("{host}:7441"),
            token: secret.clone(),
            ca_cert_pem: ca_pem.clone(),
        };
        provisioning::files::write_private_file(
            &dir.join("context.json"),
            &serde_json::to_vec_pretty(&context)?,
        )?;
        let record = NodeRecord {
            node_id: *id,
            raft_addr: addr.clone(),
            joined_via: None,
            join_members: members.clone(),
        };
        write_node_record(&dir, &record)?;
        report.push_str(&format!(
            "\n  node {id}: flotilla hub serve --data-dir {} --raft-listen {addr}",
            dir.display()
        ));
    }
    report.push_str(
        "\ncopy each directory to its machine (it holds the hub key: keep it private); the hubs \
         elect a leader once a majority runs. Each directory's context.json is an admin CLI \
         context (FLOTILLA_CONTEXT) for its hub.",
    );
    Ok(report)
}

/// A record `hub bootstrap` left in `data_dir` as `file`, if it did.
fn read_founding(data_dir: &Path, file: &str) -> anyhow::Result<Option<shared_proto::store::Object>> {
    let path = data_dir.join(file);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if bytes.len() > 64 * 1024 {
        bail!("{} is {} bytes: not a record of hub bootstrap", path.display(), bytes.len());
    }
    let object =
        shared_proto::store::Object::decode(&bytes).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(object))
}

/// The fleet CA `hub bootstrap` left in `data_dir`, opened with the hub key.
pub fn read_founding_ca(data_dir: &Path, key: &HubKey) -> anyhow::Result<Option<provisioning::ca::FleetCa>> {
    let record = match read_founding(data_dir, FOUNDING_CA_FILE)? {
        None => return Ok(None),
        Some(shared_proto::store::Object::FleetCa(r)) => r,
        Some(_) => bail!("{} does not hold a CA", data_dir.join(FOUNDING_CA_FILE).display()),
    };
    let opened = key.open_ca(&record).map_err(|e| anyhow::anyhow!("{FOUNDING_CA_FILE}: {e}"))?;
    Ok(Some(provisioning::ca::FleetCa::from_record(&opened)?))
}

/// The first admin token `hub bootstrap` left in `data_dir`, if it did.
pub fn read_founding_token(data_dir: &Path) -> anyhow::Result<Option<shared_proto::store::ApiTokenRecord>> {
    match read_founding(data_dir, FOUNDING_TOKEN_FILE)? {
        None => Ok(None),
        Some(shared_proto::store::Object::ApiToken(r)) => Ok(Some(r)),
        Some(_) => bail!("{} does not hold a token record", data_dir.join(FOUNDING_TOKEN_FILE).display()),
    }
}

pub fn read_node_record(data_dir: &Path) -> anyhow::Result<Option<NodeRecord>> {
    let path = data_dir.join(NODE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            if bytes.len() > 64 * 1024 {
                bail!("{} is {} bytes: not a node record", path.display(), bytes.len());
            }
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn write_node_record(data_dir: &Path, record: &NodeRecord) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(record)?;
    provisioning::files::write_file_atomic(&data_dir.join(NODE_FILE), &bytes, 0o600)?;
    Ok(())
}

/// Writes the hub's Raft identity: `chain` (its certificate first), its PKCS#8 key, and
/// the CAs it trusts.
pub fn save_identity(
    data_dir: &Path,
    chain: &[CertificateDer<'_>],
    key_pkcs8_der: &[u8],
    trusted: &[CertificateDer<'_>],
) -> anyhow::Result<()> {
    let mut pem = String::from("# The hub's certificate chain\n");
    pem.push_str(&provisioning::pem::encode_cert_chain(chain));
    pem.push_str(&provisioning::pem::encode_private_key(key_pkcs8_der));
    pem.push_str("# Trusted CAs\n");
    for ca in trusted {
        pem.push_str(&provisioning::pem::encode_cert(ca));
    }
    provisioning::files::write_private_file(&data_dir.join(IDENTITY_FILE), pem.as_bytes())?;
    Ok(())
}

/// How long the certificate a hub starts Raft with lasts when nothing else says: the
/// running hub replaces it at once with one of its configured lifetime (`sync::pki`).
pub const BOOTSTRAP_CERT_LIFETIME: Duration = Duration::from_secs(86_400);

/// A certificate for hub `node_id`'s Raft identity from `ca`: its chain (the certificate,
/// then the CA) and PKCS#8 key.
pub fn raft_certificate(
    ca: &provisioning::ca::FleetCa,
    node_id: u64,
    lifetime: Duration,
) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), provisioning::ca::CaError> {
    let cert = ca.issue_hub_cert(&format!("hub-{node_id}"), &[hub_store::peer_name(node_id)], lifetime)?;
    let chain = vec![CertificateDer::from(cert.cert_der.clone()), ca.cert_der().clone()];
    Ok((chain, cert.key_pkcs8_der.clone()))
}

/// The identity saved by [`save_identity`], if there is one, as a live TLS identity.
pub fn load_identity(data_dir: &Path) -> anyhow::Result<Option<Arc<HubTls>>> {
    let path = data_dir.join(IDENTITY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let (chain_part, trusted_part) = text
        .split_once("# Trusted CAs\n")
        .with_context(|| format!("{} has no trusted CAs", path.display()))?;
    let chain = provisioning::pem::decode_certs(chain_part).with_context(|| format!("{}", path.display()))?;
    let key =
        provisioning::pem::decode_private_key(chain_part).with_context(|| format!("{}", path.display()))?;
    let trusted =
        provisioning::pem::decode_certs(trusted_part).with_context(|| format!("{}", path.display()))?;
    if chain.is_empty() || trusted.is_empty() {
        bail!("{} must hold a certificate chain and at least one trusted CA", path.display());
    }
    Ok(Some(HubTls::new(chain, key, &trusted).with_context(|| format!("{}", path.display()))?))
}

/// A new hub key's worth of PKCS#8 for [`save_identity`] from a rustls key.
pub fn pkcs8_der(key: &PrivateKeyDer<'_>) -> anyhow::Result<Vec<u8>> {
    match key {
        PrivateKeyDer::Pkcs8(k) => Ok(k.secret_pkcs8_der().to_vec()),
        _ => bail!("the hub's key is not PKCS#8"),
    }
}

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: [u8; 32],
    pub expires_at: Timestamp,
    nonce: String,
    mac: Vec<u8>,
}

impl JoinToken {
    fn signed_part(ca_fingerprint: &[u8; 32], expires_at: Timestamp, nonce: &str) -> String {
        format!("{TOKEN_PREFIX}.{}.{}.{nonce}", hex::encode(ca_fingerprint), expires_at.millis())
    }

    /// A new token for the cluster whose fleet CA has `ca_fingerprint`.
    pub fn issue(key: &HubKey, ca_fingerprint: [u8; 32], now: Timestamp, ttl: Duration) -> String {
        let expires_at =
            Timestamp(now.millis().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)));
        let nonce = crate::util::random_hex(8);
        let signed = JoinToken::signed_part(&ca_fingerprint, expires_at, &nonce);
        let mac = key.join_mac(signed.as_bytes());
        format!("{signed}.{}", hex::encode(mac))
    }

    pub fn parse(s: &str) -> Result<JoinToken, String> {
        if s.len() > MAX_TOKEN_LEN {
            return Err(format!("a join token is at most {MAX_TOKEN_LEN} characters"));
        }
        let bad = || {
            "not a hub join token (flj1.<ca>.<expiry>.<nonce>.<mac>): make one with `flotilla hub join-token create`".to_string()
        };
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [prefix, ca, expiry, nonce, mac] = parts.as_slice() else { return Err(bad()) };
        if *prefix != TOKEN_PREFIX || nonce.is_empty() || !nonce.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let ca_fingerprint: [u8; 32] =
            hex::decode(ca).ok().and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        let expires_at = Timestamp(expiry.parse().map_err(|_| bad())?);
        let mac = hex::decode(mac).map_err(|_| bad())?;
        Ok(JoinToken { ca_fingerprint, expires_at, nonce: nonce.to_string(), mac })
    }

    /// Checks the token's signature, CA and expiry.
    pub fn check(&self, key: &HubKey, ca_fingerprint: &[u8; 32], now: Timestamp) -> Result<(), String> {
        let signed = JoinToken::signed_part(&self.ca_fingerprint, self.expires_at, &self.nonce);
        if !key.verify_join_mac(signed.as_bytes(), &self.mac) {
            return Err("the join token was not made by this cluster (or was altered)".into());
        }
        if &self.ca_fingerprint != ca_fingerprint {
            return Err(
                "the join token names another fleet CA (the CA was rotated since): make a new one".into()
            );
        }
        if now >= self.expires_at {
            return Err(format!(
                "the join token expired at {}: make a new one",
                self.expires_at.to_rfc3339()
            ));
        }
        Ok(())
    }
}

/// `POST /api/v1/cluster/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    /// Where the other hubs will reach the new hub's Raft listener (`host:port`).
    pub raft_addr: String,
    /// The node id wanted; the cluster picks the next free one when absent.
    #[serde(default)]
    pub node_id: Option<u64>,
}

/// What a joining hub is given.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinGrant {
    pub node_id: u64,
    /// The cluster's hub key, base64 (it opens the fleet CA and Secrets).
    pub hub_key: String,
    /// The new hub's certificate chain (PEM).
    pub chain_pem: String,
    /// Its PKCS#8 key (PEM).
    pub key_pem: String,
    /// The CAs the cluster trusts (PEM).
    pub trusted_pem: String,
    /// The current members, node id -> raft address.
    pub members: BTreeMap<u64, String>,
}

impl std::fmt::Debug for JoinGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinGrant")
            .field("node_id", &self.node_id)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/cluster/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddMemberRequest {
    pub token: String,
    pub node_id: u64,
    pub raft_addr: String,
}

/// An HTTPS client for `hub_url` that trusts only the CA the token names.
fn join_client(token: &JoinToken) -> anyhow::Result<reqwest::Client> {
    let mut tls =
        rustls::ClientConfig::clone(&*provisioning::tls::enrolment_client_config(token.ca_fingerprint)?);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()?)
}

async fn post<Req: Serialize, Resp: serde::de::DeserializeOwned>(
    hub_url: &str,
    path: &str,
    token: &JoinToken,
    body: &Req,
) -> anyhow::Result<Resp> {
    let url = format!("{}{path}", hub_url.trim_end_matches('/'));
    let resp =
        join_client(token)?.post(&url).json(body).send().await.with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("detail").or(v.get("message")).and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned());
        bail!("{url} answered {status}: {message}");
    }
    serde_json::from_slice(&bytes).with_context(|| format!("reading the answer of {url}"))
}

/// Step 1 of a join: asks `hub_url` for this hub's credentials and writes them, with the
/// node record, into `data_dir`. Returns the node id and the members to contact.
pub async fn fetch_credentials(
    hub_url: &str,
    token: &str,
    raft_addr: &str,
    node_id: Option<u64>,
    data_dir: &Path,
) -> anyhow::Result<(u64, BTreeMap<u64, String>)> {
    let parsed = JoinToken::parse(token).map_err(anyhow::Error::msg)?;
    let req = JoinRequest { token: token.to_string(), raft_addr: raft_addr.to_string(), node_id };
    let grant: JoinGrant = post(hub_url, "/api/v1/cluster/join", &parsed, &req).await?;
    use base64::Engine;
    let hub_key = base64::engine::general_purpose::STANDARD
        .decode(&grant.hub_key)
        .context("the hub key in the join answer is not base64")?;
    if hub_key.len() != 32 {
        bail!("the hub key in the join answer holds {} bytes, not 32", hub_key.len());
    }
    let chain = provisioning::pem::decode_certs(&grant.chain_pem)?;
    let key = provisioning::pem::decode_private_key(&grant.key_pem)?;
    let trusted = provisioning::pem::decode_certs(&grant.trusted_pem)?;
    if !hub_store::peer_ids(chain.first().map_or(&[][..], |c| c.as_ref())).contains(&grant.node_id) {
        bail!("the certificate in the join answer does not name node {}", grant.node_id);
    }
    std::fs::create_dir_all(data_dir)?;
    provisioning::files::write_private_file(&data_dir.join(crate::sealing::KEY_FILE), &hub_key)?;
    save_identity(data_dir, &chain, &pkcs8_der(&key)?, &trusted)?;
    write_node_record(
        data_dir,
        &NodeRecord {
            node_id: grant.node_id,
            raft_addr: raft_addr.to_string(),
            joined_via: Some(hub_url.to_string()),
            join_members: grant.members.clone(),
        },
    )?;
    Ok((grant.node_id, grant.members))
}

/// Step 2 of a join: asks the cluster to add this hub (idempotent).
pub async fn request_membership(
    hub_url: &str,
    token: &str,
    node_id: u64,
    raft_addr: &str,
) -> anyhow::Result<()> {
    let parsed = JoinToken::parse(token).map_err(anyhow::Error::msg)?;
    let req = AddMemberRequest { token: token.to_string(), node_id, raft_addr: raft_addr.to_string() };
    let _: serde_json::Value = post(hub_url, "/api/v1/cluster/members", &parsed, &req).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn static_members_are_id_equals_host_port() {
        assert_eq!(
            super::parse_member("2=hub-2.example:7450").unwrap(),
            (2, "hub-2.example:7450".to_string())
        );
        assert_eq!(super::parse_member(" 3 = [::1]:7450").unwrap(), (3, "[::1]:7450".to_string()));
        for bad in ["0=h:1", "x=h:1", "1=h", "1=:1", "1=h:0", "1=h:99999", "h:1"] {
            assert!(super::parse_member(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn join_tokens_are_signed_bound_to_the_ca_and_expire() {
        let key = HubKey::from_bytes(&[3; 32]);
        let ca = [7u8; 32];
        let now = Timestamp(1_000_000);
        let token = JoinToken::issue(&key, ca, now, Duration::from_secs(60));
        let parsed = JoinToken::parse(&token).unwrap();
        assert_eq!(parsed.ca_fingerprint, ca);
        parsed.check(&key, &ca, now).unwrap();
        assert!(parsed.check(&key, &ca, Timestamp(now.0 + 60_000)).unwrap_err().contains("expired"));
        assert!(parsed.check(&key, &[8; 32], now).unwrap_err().contains("another fleet CA"));
        assert!(parsed.check(&HubKey::from_bytes(&[4; 32]), &ca, now).unwrap_err().contains("not made"));
        // A later expiry written into the token breaks its signature.
        let forged = token.replace(&format!(".{}.", parsed.expires_at.0), &format!(".{}.", u64::MAX));
        assert!(JoinToken::parse(&forged).unwrap().check(&key, &ca, now).is_err());
        for bad in ["", "flj1", "flj2.aa.1.ab.cd", &"x".repeat(600), "flj1.zz.1.ab.cd"] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_identity_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_identity(dir.path()).unwrap().is_none());
        let ca = provisioning::ca::FleetCa::generate("test").unwrap();
        let cert = ca.issue_hub_cert("hub-2", &[hub_store::peer_name(2)], Duration::from_secs(3600)).unwrap();
        let chain = vec![CertificateDer::from(cert.cert_der.clone()), ca.cert_der().clone()];
        save_identity(dir.path(), &chain, &cert.key_pkcs8_der, &[ca.cert_der().clone()]).unwrap();
        let tls = load_identity(dir.path()).unwrap().unwrap();
        assert_eq!(tls.current_chain(), chain);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
