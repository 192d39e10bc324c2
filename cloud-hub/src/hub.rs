//! `flotilla hub serve`: opens the store, bootstraps the fleet CA and the first admin
//! token, and runs the API, the QUIC endpoint for agents and the controllers until
//! SIGINT/SIGTERM.

use crate::controllers::{self, ControllerConfig};
use crate::sealing::HubKey;
use crate::state::{HubConfig, HubState};
use crate::sync::fanout::ManifestFanout;
use crate::sync::liveness::LivenessTable;
use anyhow::{Context, bail};
use hub_store::{Store, StoreConfig};
use provisioning::ca::FleetCa;
use shared_proto::clock::{Clock, SystemClock};
use shared_proto::config::CliContext;
use shared_proto::store::{Object, Precondition, Role, StoreCommand, StoreKind, StoreOutcome};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Where the hub keeps its store, image blobs and CLI context.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = "/var/lib/flotilla")]
    pub data_dir: PathBuf,
    /// HTTPS API address.
    #[arg(long, default_value = "0.0.0.0:7440")]
    pub api_listen: SocketAddr,
    /// QUIC address agents connect to.
    #[arg(long, default_value = "0.0.0.0:7441")]
    pub quic_listen: SocketAddr,
    /// TCP address of the fallback for agents whose network drops UDP (TLS, same
    /// frames). Default: the QUIC address, over TCP. `off` disables it.
    #[arg(long, value_name = "ADDR|off")]
    pub tcp_listen: Option<String>,
    /// New agent sessions admitted per second; past that, agents are told when to come
    /// back, which spreads a reconnect storm after a restart.
    #[arg(long, default_value_t = 2000)]
    pub session_rate: u32,
    /// The DNS name or IP address devices (and other hubs) reach this hub at, without a
    /// port; repeat it for more. Every one goes into the hub's certificate, and the
    /// first is the address `flotilla token create` tells devices to use. Without it, a
    /// hub bound to all interfaces tells them one of this machine's non-loopback
    /// addresses.
    #[arg(long = "advertise")]
    pub advertise: Vec<String>,
    /// Also serve `GET /metrics` over plain HTTP without a token, on this loopback
    /// address (for a Prometheus or agent on the same machine). `/metrics` on the API
    /// port needs a viewer token for every site.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// How often agents send heartbeats.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// How long a disconnected device stays Online before it is marked Offline.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub offline_grace: Duration,
    /// After the hub starts, how long the fleet has to reconnect before devices not
    /// heard from count as disconnected (then `--offline-grace` applies).
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub startup_grace: Duration,
    /// How long the device certificates this hub signs are valid. Devices renew at two
    /// thirds of it while online; one that stays offline past the end comes back
    /// quarantined, until an operator approves it.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    pub device_cert_lifetime: Duration,
    /// How long the hub's own TLS certificate is valid; the hub issues itself a new one
    /// at two thirds, without a restart.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub hub_cert_lifetime: Duration,
    /// Largest image archive accepted by `flotilla image import`, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    pub max_image_bytes: u64,
    /// HTTPS connections served at once, from all clients.
    #[arg(long, default_value_t = crate::api::conn::Limits::default().total)]
    pub api_max_connections: usize,
    /// HTTPS connections served at once from one client address (so that one client,
    /// slow or idle or hostile, cannot take every slot).
    #[arg(long, default_value_t = crate::api::conn::Limits::default().per_client)]
    pub api_max_connections_per_client: usize,
    /// How many revisions of recent changes the hub keeps in memory (also bounded to
    /// 64 MiB): a watch or list page older than that is answered 410 and lists again.
    #[arg(long, default_value_t = hub_store::HistoryLimits::default().max_revisions)]
    pub watch_history: usize,
    /// Run as one hub of a cluster: Raft with the other hubs on this address, over
    /// mutual TLS with certificates from the fleet CA. Without it the hub is a
    /// one-member cluster with no Raft listener.
    #[arg(long, value_name = "ADDR")]
    pub raft_listen: Option<SocketAddr>,
    /// The `host:port` the other hubs reach this hub's Raft listener at. Default:
    /// --raft-listen, which must then name an address rather than 0.0.0.0.
    #[arg(long, value_name = "HOST:PORT")]
    pub raft_advertise: Option<String>,
    /// This hub's Raft node id, remembered in the data directory after the first start
    /// (`flotilla hub join` is given one by the cluster).
    #[arg(long)]
    pub node_id: Option<u64>,
}

/// How this hub takes part in Raft.
struct Membership {
    node_id: u64,
    /// The listener and the address peers dial; `None` for a lone hub.
    raft: Option<(SocketAddr, String)>,
    /// The first members, when this hub founds a cluster or joins one (ignored by a store
    /// that has data already).
    initial_members: std::collections::BTreeMap<u64, String>,
    /// A cluster's founding hub makes the fleet CA before Raft starts (its certificate
    /// comes from it), and writes it into the store once elected.
    founding_ca: Option<FleetCa>,
    /// The TLS identity Raft starts with.
    tls: Option<Arc<provisioning::tls::HubTls>>,
}

/// Where `flotilla hub join` asks to be added once its Raft listener runs.
pub struct JoinVia {
    pub hub_url: String,
    pub token: String,
}

fn raft_advertise(args: &ServeArgs, listen: SocketAddr) -> anyhow::Result<String> {
    match &args.raft_advertise {
        Some(a) => Ok(a.clone()),
        None if listen.ip().is_unspecified() => bail!(
            "--raft-listen {listen} is every interface: say with --raft-advertise HOST:PORT where the other hubs reach it"
        ),
        None => Ok(listen.to_string()),
    }
}

/// Works out this hub's node id, Raft addresses and TLS identity, founding a cluster's
/// identity on the first start of its first hub.
fn membership(
    args: &ServeArgs,
    data_dir: &Path,
    joined: Option<&std::collections::BTreeMap<u64, String>>,
) -> anyhow::Result<Membership> {
    let Some(listen) = args.raft_listen else {
        if let Some(n) = crate::cluster::read_node_record(data_dir)? {
            bail!(
                "{} belongs to node {} of a hub cluster: start it with --raft-listen (its peers reach it at {})",
                data_dir.display(),
                n.node_id,
                n.raft_addr
            );
        }
        return Ok(Membership {
            node_id: args.node_id.unwrap_or(1),
            raft: None,
            initial_members: Default::default(),
            founding_ca: None,
            tls: None,
        });
    };
    let advertise = raft_advertise(args, listen)?;
    let record = crate::cluster::read_node_record(data_dir)?;
    if let Some(via) = record.as_ref().and_then(|r| r.joined_via.as_ref())
        && joined.is_none()
    {
        bail!(
            "{} was joining the cluster through {via} and was not added yet: run `flotilla hub join {via} …` \
             again rather than `hub serve`, which would found a cluster of its own",
            data_dir.display()
        );
    }
    // Static peers (`hub bootstrap`): the members this one forms the cluster with.
    let static_members = record
        .as_ref()
        .filter(|r| r.joined_via.is_none())
        .map(|r| r.join_members.clone())
        .unwrap_or_default();
    let node_id = match (record, args.node_id) {
        (Some(n), Some(id)) if n.node_id != id => bail!(
            "{} belongs to node {}, not {id}: drop --node-id or use another data directory",
            data_dir.display(),
            n.node_id
        ),
        (Some(n), _) => n.node_id,
        (None, id) => {
            let id = id.unwrap_or(1);
            if id == 0 {
                bail!("node ids start at 1");
            }
            let record = crate::cluster::NodeRecord {
                node_id: id,
                raft_addr: advertise.clone(),
                joined_via: None,
                join_members: Default::default(),
            };
            crate::cluster::write_node_record(data_dir, &record)?;
            id
        }
    };
    let mut founding_ca = None;
    let tls = match crate::cluster::load_identity(data_dir)? {
        Some(tls) => tls,
        None => {
            if data_dir.join("store").join(hub_store::DB_FILE_NAME).exists() {
                bail!(
                    "{} has a store but no {}: this hub cannot prove who it is to its peers. A lone hub \
                     becomes a cluster's first through a backup: `flotilla backup create FILE`, then \
                     `flotilla backup restore FILE --secrets-key {}/{} --raft-advertise HOST:PORT --data-dir NEW_DIR`. \
                     A member that lost the file: remove it (flotilla hub remove {node_id}) and join it again \
                     from an empty data directory",
                    data_dir.display(),
                    crate::cluster::IDENTITY_FILE,
                    data_dir.display(),
                    crate::sealing::KEY_FILE
                );
            }
            // The first start of a new cluster's first hub: its fleet CA is made here.
            let ca = FleetCa::generate("Flotilla fleet CA")?;
            let (chain, key) =
                crate::cluster::raft_certificate(&ca, node_id, crate::cluster::BOOTSTRAP_CERT_LIFETIME)?;
            crate::cluster::save_identity(data_dir, &chain, &key, &[ca.cert_der().clone()])?;
            tracing::info!(node_id, fingerprint = %ca.fingerprint(), "founding a hub cluster with a new fleet CA");
            founding_ca = Some(ca);
            crate::cluster::load_identity(data_dir)?.context("reading the identity just written")?
        }
    };
    let initial_members = match joined {
        Some(members) => members.clone(),
        None if !static_members.is_empty() => static_members,
        None => std::collections::BTreeMap::from([(node_id, advertise.clone())]),
    };
    Ok(Membership { node_id, raft: Some((listen, advertise)), initial_members, founding_ca, tls: Some(tls) })
}

/// Lifts the soft limit on open files to the hard one: every API connection and every
/// agent on the TCP fallback holds a descriptor, and the common soft default (1024) is
/// far below what the connection limits allow.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, soft, "cannot raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// A running hub, for `serve` and for `demo`.
pub struct RunningHub {
    pub api_addr: SocketAddr,
    pub quic_addr: SocketAddr,
    pub tcp_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// What devices are told to dial, or why there is nothing to tell them.
    pub agent_address: Result<String, crate::advertise::NoAddress>,
    pub context_path: PathBuf,
    shutdown: tokio::sync::watch::Sender<bool>,
    endpoint: quinn::Endpoint,
    store: Store,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningHub {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.endpoint.close(crate::sync::close_code::SHUTDOWN.into(), b"hub shutting down");
        for t in self.tasks {
            t.abort();
        }
        if let Err(e) = self.store.shutdown().await {
            tracing::warn!(error = %e, "store shutdown");
        }
    }
}

async fn wait_for_leader(store: &Store) -> anyhow::Result<()> {
    let mut leader = store.leader();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while leader.borrow().is_none() {
        tokio::time::timeout_at(deadline, leader.changed())
            .await
            .context("no Raft leader elected within 60s")?
            .context("store closed")?;
    }
    Ok(())
}

/// The fleet CA, created on the first start of the cluster (or taken from the founding
/// hub's identity). Its private key is stored sealed with the hub key; a record from an
/// older hub, whose key is in clear, is sealed here by the leader.
async fn fleet_ca(
    store: &Store,
    key: &HubKey,
    mut founding: Option<FleetCa>,
    may_generate: bool,
) -> anyhow::Result<FleetCa> {
    for _ in 0..300 {
        if let Some(hub_store::Revisioned { object: Object::FleetCa(r), revision, .. }) =
            store.get_revisioned(StoreKind::FleetCa, "fleet").await?
        {
            let opened = key.open_ca(&r).map_err(|e| {
                anyhow::anyhow!("{e}: start this hub with the cluster's {}", crate::sealing::KEY_FILE)
            })?;
            if !crate::sealing::ca_key_is_sealed(&r) && store.is_leader() {
                let sealed = key.seal_ca(r)?;
                store
                    .write(StoreCommand::put(Object::FleetCa(sealed), Precondition::RevisionIs(revision)))
                    .await?;
                tracing::info!("sealed the fleet CA's private key in the store with the hub key");
            }
            return Ok(FleetCa::from_record(&opened)?);
        }
        if store.is_leader() && (founding.is_some() || may_generate) {
            let ca = match founding.take() {
                Some(ca) => ca,
                None => FleetCa::generate("Flotilla fleet CA")?,
            };
            let record = key.seal_ca(ca.to_record(SystemClock.now()))?;
            match store.write(StoreCommand::put(Object::FleetCa(record), Precondition::MustNotExist)).await? {
                StoreOutcome::Applied { .. } => {
                    tracing::info!(fingerprint = %ca.fingerprint(), "created the fleet CA");
                    return Ok(ca);
                }
                StoreOutcome::Conflict { .. } | StoreOutcome::Each(_) => continue,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the fleet CA did not appear in the store")
}

/// Creates the first admin token when the store has none; returns its secret. With
/// `founding` (`hub bootstrap` made it, and the CLI contexts hold its secret), stores
/// that one instead, on whichever hub leads.
async fn first_admin_token(
    store: &Store,
    founding: Option<shared_proto::store::ApiTokenRecord>,
) -> anyhow::Result<Option<String>> {
    if let Some(record) = founding {
        for _ in 0..300 {
            if !store.list(StoreKind::ApiToken).await?.is_empty() {
                return Ok(None);
            }
            if store.is_leader() {
                store
                    .write(StoreCommand::put(Object::ApiToken(record.clone()), Precondition::MustNotExist))
                    .await?;
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("the first admin token did not appear in the store");
    }
    if !store.list(StoreKind::ApiToken).await?.is_empty() || !store.is_leader() {
        return Ok(None);
    }
    let (secret, record) =
        crate::api::tokens::new_api_token(Role::Admin, "created at first start".into(), SystemClock.now())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    match store.write(StoreCommand::put(Object::ApiToken(record), Precondition::MustNotExist)).await? {
        StoreOutcome::Applied { .. } => Ok(Some(secret)),
        StoreOutcome::Conflict { .. } | StoreOutcome::Each(_) => Ok(None),
    }
}

fn host_sans(args: &ServeArgs) -> Vec<String> {
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(h) = nix::unistd::gethostname()
        && let Some(h) = h.to_str()
        && !h.is_empty()
    {
        sans.push(h.to_string());
    }
    for addr in [args.api_listen, args.quic_listen] {
        if !addr.ip().is_unspecified() {
            sans.push(addr.ip().to_string());
        }
    }
    sans.extend(args.advertise.iter().cloned());
    sans.sort();
    sans.dedup();
    sans
}

fn connect_host(addr: SocketAddr) -> String {
    match addr {
        a if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        a => a.to_string(),
    }
}

/// Writes the CLI context: with a new token when we just made one, otherwise keeping
/// the token of the existing file (only the addresses and CA may have changed).
fn write_context(
    path: &Path,
    ctx_token: Option<String>,
    api: SocketAddr,
    quic: SocketAddr,
    trusted: &[Vec<u8>],
) -> anyhow::Result<bool> {
    let token = match ctx_token {
        Some(t) => t,
        None => match std::fs::read(path).ok().and_then(|b| serde_json::from_slice::<CliContext>(&b).ok()) {
            Some(old) => old.token,
            None => return Ok(false),
        },
    };
    let ctx = CliContext {
        hub: format!("https://{}", connect_host(api)),
        quic: connect_host(quic),
        token,
        ca_cert_pem: trusted.iter().map(|c| provisioning::pem::encode_cert(c)).collect(),
    };
    let bytes = serde_json::to_vec_pretty(&ctx)?;
    provisioning::files::write_private_file(path, &bytes)?;
    Ok(true)
}

/// Says so at start when Secrets in the store were sealed with another hub key (a data
/// directory restored without the old `secrets.key`, or a hub given the wrong one): devices
/// would not get them.
fn warn_unopenable_secrets(store: &Store, key: &crate::sealing::HubKey, data_dir: &Path) {
    let secrets = match store.list_local(StoreKind::Secret) {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "cannot list Secrets to check the hub key"),
    };
    let foreign: Vec<&str> = secrets
        .iter()
        .filter_map(|o| match o {
            Object::Secret(s) if s.key_id != key.id() => Some(s.metadata.name.as_str()),
            _ => None,
        })
        .collect();
    if !foreign.is_empty() {
        tracing::warn!(
            secrets = ?foreign,
            hub_key = key.id(),
            "{} Secret(s) were sealed with another hub key and will not open: stop the hub, put the \
             old hub's {} in {}, and start it again (or create the Secrets again)",
            foreign.len(),
            crate::sealing::KEY_FILE,
            data_dir.display()
        );
    }
}

pub async fn start(args: ServeArgs) -> anyhow::Result<RunningHub> {
    start_joining(args, None).await
}

/// [`start`] for a hub that joins a cluster: `join` holds the members it was told of and
/// where to ask to be added once its Raft listener runs.
pub async fn start_joining(
    args: ServeArgs,
    join: Option<(JoinVia, std::collections::BTreeMap<u64, String>)>,
) -> anyhow::Result<RunningHub> {
    let clock = shared_proto::clock::SystemClock::shared();
    let data_dir = args.data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let key = Arc::new(HubKey::load_or_create(&data_dir)?);
    let mut member = membership(&args, &data_dir, join.as_ref().map(|(_, m)| m))?;
    if member.founding_ca.is_none() {
        member.founding_ca = crate::cluster::read_founding_ca(&data_dir, &key)?;
    }
    // A member of a cluster formed from static peers waits for the CA `hub bootstrap`
    // made rather than making one of its own.
    let static_peers = member.raft.is_some() && member.initial_members.len() > 1 && join.is_none();
    let peer_tls = match &member.tls {
        Some(tls) => {
            Some(hub_store::PeerTls { server: tls.raft_server_config()?, client: tls.raft_client_config()? })
        }
        None => None,
    };
    let tuning = hub_store::RaftTuning {
        watch_history: hub_store::HistoryLimits {
            max_revisions: args.watch_history,
            ..hub_store::HistoryLimits::default()
        },
        ..hub_store::RaftTuning::default()
    };
    let store = Store::open_with_tuning(
        StoreConfig {
            data_dir: data_dir.join("store"),
            node_id: member.node_id,
            raft_addr: member.raft.as_ref().map(|(listen, _)| *listen),
            initial_members: member.initial_members.clone(),
            peer_tls,
        },
        tuning,
    )
    .await
    .context("opening the store")?;
    if let Some((via, _)) = &join {
        let advertise = member.raft.as_ref().map(|(_, a)| a.clone()).unwrap_or_default();
        ask_to_join(&via.hub_url, &via.token, member.node_id, &advertise).await?;
        // A member now: later starts may be plain `hub serve`.
        let record = crate::cluster::NodeRecord {
            node_id: member.node_id,
            raft_addr: advertise,
            joined_via: None,
            join_members: Default::default(),
        };
        crate::cluster::write_node_record(&data_dir, &record)?;
    }
    wait_for_leader(&store).await?;
    fleet_ca(&store, &key, member.founding_ca.take(), !static_peers).await?;
    // In the store now (sealed): the file has done its job.
    let _ = std::fs::remove_file(data_dir.join(crate::cluster::FOUNDING_CA_FILE));
    let new_token = first_admin_token(&store, crate::cluster::read_founding_token(&data_dir)?).await?;
    let _ = std::fs::remove_file(data_dir.join(crate::cluster::FOUNDING_TOKEN_FILE));

    let hub_name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.to_str().map(str::to_string))
        .filter(|h| shared_proto::validate::dns_label_problem(h).is_none())
        .unwrap_or_else(|| "hub".to_string());
    let mut sans = host_sans(&args);
    if member.raft.is_some() {
        sans.push(hub_store::peer_name(member.node_id));
    }
    let settings = crate::sync::pki::HubCertSettings {
        name: hub_name,
        sans,
        lifetime: args.hub_cert_lifetime,
        identity_dir: member.raft.is_some().then(|| data_dir.clone()),
    };
    let pki = Arc::new(
        crate::sync::pki::Pki::load_into(&store, key.clone(), settings, clock.clone(), member.tls.clone())
            .await?,
    );
    let api_tls = pki.tls().api_server_config()?;
    let quic_tls = pki.tls().quic_server_config()?;

    let blobs = images::blobstore::BlobStore::open(data_dir.join("blobs"))?;
    // Bound early: a bad or taken address fails the start, before anything serves.
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(crate::metrics::http::bind(addr).await.context("binding --metrics-listen")?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("binding the API to {}", args.api_listen))?;
    let api_addr = listener.local_addr()?;

    let tcp_addr = match args.tcp_listen.as_deref() {
        Some("off") => None,
        Some(a) => Some(a.parse::<SocketAddr>().with_context(|| format!("--tcp-listen {a:?}"))?),
        None => Some(args.quic_listen),
    };
    let live = Arc::new(LivenessTable::default());
    let fanout = Arc::new(ManifestFanout::default());
    let identities = Arc::new(crate::sync::identity::LiveIdentities::default());
    let config = HubConfig {
        data_dir: data_dir.clone(),
        max_image_bytes: args.max_image_bytes,
        quic_addr: args.quic_listen,
        heartbeat_interval: args.heartbeat_interval,
        device_cert_validity: args.device_cert_lifetime,
        agent_address: Err(crate::advertise::NoAddress { bound: args.quic_listen }),
    };
    let admission = crate::sync::admission::AdmissionConfig {
        rate: args.session_rate,
        burst: args.session_rate,
        ..Default::default()
    };
    let fleet = Arc::new(crate::sync::fleet::FleetLiveness::new(live.clone()));
    let mut state = HubState {
        store: store.clone(),
        blobs,
        live: live.clone(),
        fleet: fleet.clone(),
        fanout: fanout.clone(),
        identities: identities.clone(),
        sessions: Default::default(),
        pki: pki.clone(),
        config,
        clock: clock.clone(),
        admission: std::sync::Mutex::new(crate::sync::admission::AdmissionControl::new(admission)),
        key,
        attach: Default::default(),
        peers: Default::default(),
        metrics: Default::default(),
        hubs: Default::default(),
    };
    warn_unopenable_secrets(&store, &state.key, &data_dir);
    let endpoint = crate::sync::endpoint(&state, quic_tls.clone(), args.quic_listen)
        .with_context(|| format!("binding QUIC to {}", args.quic_listen))?;
    let quic_addr = endpoint.local_addr()?;
    state.config.quic_addr = quic_addr;
    let agent_address =
        crate::advertise::choose(&args.advertise, quic_addr, &crate::advertise::interface_addresses());
    match &agent_address {
        Ok(a) => {
            tracing::info!(address = %a, "devices are told to reach this hub at this address (--advertise sets it)")
        }
        Err(e) => tracing::warn!("{e}"),
    }
    state.config.agent_address = agent_address.clone();
    // With the default, follow the QUIC port even when it was chosen by the system.
    let tcp_addr = tcp_addr.map(|a| if args.tcp_listen.is_none() { quic_addr } else { a });
    let tcp = match tcp_addr {
        Some(a) => Some(
            crate::sync::tcp::bind(a).await.with_context(|| format!("binding the TCP fallback to {a}"))?,
        ),
        None => None,
    };
    let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
    let state = Arc::new(state);
    // What the other hubs of a cluster ask this one for (blobs it holds).
    store.serve_peers(
        crate::sync::replica::peer_routes(state.clone())
            .merge(crate::sync::fleet::peer_routes(fleet.clone(), clock.clone())),
    );

    let context_path = data_dir.join("context.json");
    if !write_context(&context_path, new_token, api_addr, quic_addr, &state.pki.trusted_der())? {
        tracing::warn!(
            path = %context_path.display(),
            "no CLI context file and the admin token exists already: the CLI needs a token (flotilla api-token create from another context)"
        );
    }

    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    {
        let fanout = fanout.clone();
        let store = store.clone();
        tasks.push(tokio::spawn(async move { fanout.run(store).await }));
    }
    {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { identities.run(store).await }));
    }
    tasks.push(tokio::spawn(crate::sync::blob_gc::run(state.clone())));
    {
        let store = store.clone();
        let hubs = state.hubs.clone();
        tasks.push(tokio::spawn(async move { hubs.run(store).await }));
    }
    // A clustered hub records where devices reach it, so that every hub can name it to
    // its devices (a lone hub's devices have its address in their configuration).
    if member.raft.is_some()
        && let Ok(quic) = &agent_address
    {
        let record = shared_proto::store::HubRecord {
            name: shared_proto::store::HubRecord::name_of(member.node_id),
            node_id: member.node_id,
            agents: shared_proto::wire::HubEndpoint {
                quic: quic.clone(),
                tcp: tcp_addr
                    .map_or_else(|| quic.clone(), |t| crate::sync::hubs::tcp_endpoint(quic, t.port())),
            },
            api: format!("https://{}", crate::sync::hubs::tcp_endpoint(quic, api_addr.port())),
        };
        tasks.push(tokio::spawn(crate::sync::hubs::announce(store.clone(), record)));
    }
    {
        let store = store.clone();
        let pki = pki.clone();
        tasks.push(tokio::spawn(async move { pki.run(store).await }));
    }
    {
        // The CLI context on this machine follows the CAs, so the CLI keeps trusting the hub.
        let mut changed = pki.subscribe();
        let context_path = context_path.clone();
        let pki = pki.clone();
        tasks.push(tokio::spawn(async move {
            while changed.changed().await.is_ok() {
                if let Err(e) = write_context(&context_path, None, api_addr, quic_addr, &pki.trusted_der()) {
                    tracing::warn!(error = %e, "cannot update the CLI context with the fleet's CAs");
                }
            }
        }));
    }
    if member.raft.is_some() {
        // A follower tells the leader which devices it holds.
        tasks.push(tokio::spawn(crate::sync::fleet::run_feed(store.clone(), live)));
    }
    tasks.push(tokio::spawn(controllers::run(
        store.clone(),
        fleet,
        clock,
        ControllerConfig { offline_grace: args.offline_grace, startup_grace: args.startup_grace },
        state.metrics.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::api::serve_tls(
        listener,
        api_tls,
        crate::api::router(state.clone()),
        crate::api::conn::Limits {
            total: args.api_max_connections,
            per_client: args.api_max_connections_per_client,
        },
        shutdown_rx.clone(),
    )));
    if let Some(listener) = metrics_listener {
        tasks.push(tokio::spawn(crate::metrics::http::serve_plain(
            listener,
            state.clone(),
            shutdown_rx.clone(),
        )));
    }
    if let Some(listener) = tcp {
        tasks.push(tokio::spawn(crate::sync::tcp::serve(state.clone(), listener, quic_tls)));
    }
    tasks.push(tokio::spawn(crate::sync::serve(state, endpoint.clone())));
    tracing::info!(api = %api_addr, quic = %quic_addr, tcp = ?tcp_addr, context = %context_path.display(), "hub ready");
    Ok(RunningHub {
        api_addr,
        quic_addr,
        tcp_addr,
        metrics_addr,
        agent_address,
        context_path,
        shutdown,
        endpoint,
        store,
        tasks,
    })
}

/// Step 2 of `flotilla hub join`, retried while the cluster is busy (an election, an
/// earlier membership change).
async fn ask_to_join(hub_url: &str, token: &str, node_id: u64, raft_addr: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut pause = Duration::from_millis(200);
    loop {
        match crate::cluster::request_membership(hub_url, token, node_id, raft_addr).await {
            Ok(()) => {
                tracing::info!(node_id, "joined the hub cluster");
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %format!("{e:#}"), "asking to join the cluster; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.context("asking the cluster to add this hub")),
        }
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `flotilla hub join URL --join-token T`: fetches this hub's credentials (on the first
/// start of its data directory), then serves as a member of the cluster.
pub async fn join(hub_url: String, token: String, args: ServeArgs) -> anyhow::Result<()> {
    let Some(listen) = args.raft_listen else {
        bail!("a hub that joins a cluster needs --raft-listen ADDR for its Raft traffic");
    };
    let advertise = raft_advertise(&args, listen)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let members = if crate::cluster::load_identity(&args.data_dir)?.is_some() {
        tracing::info!("this data directory has joined already: rejoining with its identity");
        // Not added yet (a join cut short): wait to be added, as the first time. Added
        // already: the store has its membership and ignores this.
        let record = crate::cluster::read_node_record(&args.data_dir)?;
        let mut members = record.map(|r| r.join_members).unwrap_or_default();
        if members.is_empty() {
            // Any map without this hub in it makes an empty store wait to be added.
            members.insert(0, String::new());
        }
        members
    } else {
        let (node_id, members) =
            crate::cluster::fetch_credentials(&hub_url, &token, &advertise, args.node_id, &args.data_dir)
                .await?;
        println!("joining the hub cluster as node {node_id}");
        members
    };
    serve_with(args, Some((JoinVia { hub_url, token }, members))).await
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    serve_with(args, None).await
}

async fn serve_with(
    args: ServeArgs,
    join: Option<(JoinVia, std::collections::BTreeMap<u64, String>)>,
) -> anyhow::Result<()> {
    raise_fd_limit();
    let hub = start_joining(args, join).await?;
    println!("hub ready");
    println!("  api      https://{}", connect_host(hub.api_addr));
    println!("  agents   {} (QUIC)", connect_host(hub.quic_addr));
    if let Some(tcp) = hub.tcp_addr {
        println!("  agents   {} (TCP fallback)", connect_host(tcp));
    }
    match &hub.agent_address {
        Ok(a) => println!("  devices  {a}"),
        Err(_) => println!("  devices  (no address: pass --advertise)"),
    }
    if let Some(m) = hub.metrics_addr {
        println!("  metrics  http://{m}/metrics");
    }
    println!("  context  export FLOTILLA_CONTEXT={}", hub.context_path.display());
    // Store open, API and agent endpoints bound and served: systemd may start what
    // waits for the hub.
    crate::notify::ready(&format!("serving the API on {} and agents on {}", hub.api_addr, hub.quic_addr));
    let watchdog = crate::notify::watchdog_period().map(|period| {
        tracing::info!(?period, "systemd watchdog on: pinging while the store answers");
        tokio::spawn(crate::notify::watchdog(hub.store.clone(), period))
    });
    wait_for_signal().await;
    tracing::info!("shutting down");
    crate::notify::stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    hub.stop().await;
    Ok(())
}
