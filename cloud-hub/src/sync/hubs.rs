//! The cluster's hubs as devices reach them. Each hub records where devices reach it
//! (`Object::Hub`, named `hub-<node id>`) when it starts with addresses other than the
//! recorded ones; [`HubDirectory`] follows those records through the store's watch,
//! and every sync session names them to its device (`HubFrame::Hubs`, only on a
//! change). A device keeps the list and moves to another hub when its own goes away,
//! so the cluster's hubs share the fleet without a load balancer in front.

use hub_store::Store;
use shared_proto::store::{HubRecord, Object, Precondition, StoreCommand, StoreKind, StoreOutcome};
use shared_proto::wire::HubEndpoint;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The hubs' endpoints, in node order, as this hub's store has them.
pub struct HubDirectory {
    tx: watch::Sender<Arc<Vec<HubEndpoint>>>,
}

impl Default for HubDirectory {
    fn default() -> Self {
        HubDirectory { tx: watch::channel(Arc::new(Vec::new())).0 }
    }
}

/// The endpoints of `records`, in node order, without repeats.
pub fn endpoints(records: &[HubRecord]) -> Vec<HubEndpoint> {
    let mut sorted: Vec<&HubRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.node_id);
    let mut out: Vec<HubEndpoint> = Vec::new();
    for r in sorted {
        if !r.agents.quic.is_empty() && !out.contains(&r.agents) {
            out.push(r.agents.clone());
        }
    }
    out
}

impl HubDirectory {
    /// The current list; sessions follow [`HubDirectory::subscribe`] for changes.
    pub fn current(&self) -> Arc<Vec<HubEndpoint>> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<HubEndpoint>>> {
        self.tx.subscribe()
    }

    fn load(&self, store: &Store) {
        match records(store) {
            Ok(records) => {
                let list = endpoints(&records);
                self.tx.send_if_modified(|cur| {
                    let changed = **cur != list;
                    if changed {
                        *cur = Arc::new(list);
                    }
                    changed
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the cluster's hubs"),
        }
    }

    /// Follows the store's watch until it closes. On the leader, also drops the records
    /// of hubs that are not members (left over from a restored backup, or a join that
    /// never finished), and on a lone hub all of them.
    pub async fn run(&self, store: Store) {
        let mut leader = store.leader();
        loop {
            let (_, mut rx) = store.subscribe();
            self.load(&store);
            prune(&store).await;
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(batch) => {
                            if batch.changes.iter().any(|c| c.kind == StoreKind::Hub) {
                                self.load(&store);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    changed = leader.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        prune(&store).await;
                    }
                }
            }
        }
    }
}

/// Every hub record in this hub's copy of the store.
fn records(store: &Store) -> Result<Vec<HubRecord>, hub_store::StoreError> {
    Ok(store
        .list_local(StoreKind::Hub)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Hub(h) => Some(h),
            _ => None,
        })
        .collect())
}

/// The records, in the store, of hubs that are not members of the cluster.
pub fn strays(records: &[HubRecord], members: &std::collections::BTreeSet<u64>) -> Vec<String> {
    records.iter().filter(|r| !members.contains(&r.node_id)).map(|r| r.name.clone()).collect()
}

async fn prune(store: &Store) {
    if !store.is_leader() {
        return;
    }
    let st = store.status();
    // A lone hub (no Raft listener, no address) names no hub to its devices: records
    // restored from a cluster's backup go too.
    let members: std::collections::BTreeSet<u64> = st
        .voters
        .iter()
        .chain(st.learners.iter())
        .filter(|(_, addr)| !addr.is_empty())
        .map(|(id, _)| *id)
        .collect();
    let Ok(records) = records(store) else { return };
    for name in strays(&records, &members) {
        let cmd = StoreCommand::Delete {
            kind: StoreKind::Hub,
            name: name.clone(),
            precondition: Precondition::None,
        };
        match store.write(cmd).await {
            Ok(_) => {
                tracing::info!(record = %name, "dropped the device address of a hub that is not a member")
            }
            Err(e) => tracing::debug!(record = %name, error = %e, "cannot drop a stray hub record"),
        }
    }
}

/// Records where devices reach this hub, unless the store has it already. Retries while
/// the cluster has no leader; gives up only when the store closes.
pub async fn announce(store: Store, record: HubRecord) {
    let mut pause = Duration::from_millis(200);
    loop {
        let current = store.get_local(StoreKind::Hub, &record.name);
        if matches!(&current, Ok(Some(Object::Hub(h))) if *h == record) {
            return;
        }
        match store.write(StoreCommand::put(Object::Hub(record.clone()), Precondition::None)).await {
            Ok(StoreOutcome::Applied { .. }) => {
                tracing::info!(quic = %record.agents.quic, tcp = %record.agents.tcp, "recorded where devices reach this hub");
                return;
            }
            Ok(_) => {}
            Err(_) if store.is_closed() => return,
            Err(e) => tracing::debug!(error = %e, "cannot record this hub's addresses yet; retrying"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// Forgets hub `node_id` (removed from the cluster), so devices stop trying it.
pub async fn forget(store: &Store, node_id: u64) -> Result<(), hub_store::StoreError> {
    let name = HubRecord::name_of(node_id);
    store
        .write(StoreCommand::Delete { kind: StoreKind::Hub, name, precondition: Precondition::None })
        .await?;
    Ok(())
}

/// The TCP fallback's `host:port` for devices: the advertised QUIC address's host with
/// the fallback's port.
pub fn tcp_endpoint(quic: &str, tcp_port: u16) -> String {
    match quic.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{tcp_port}"),
        None => format!("{quic}:{tcp_port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, quic: &str) -> HubRecord {
        HubRecord {
            name: HubRecord::name_of(id),
            node_id: id,
            agents: HubEndpoint { quic: quic.into(), tcp: quic.into() },
            api: String::new(),
        }
    }

    #[test]
    fn endpoints_are_in_node_order_without_repeats_or_blanks() {
        let list = endpoints(&[record(3, "c:1"), record(1, "a:1"), record(2, ""), record(4, "a:1")]);
        assert_eq!(list.iter().map(|e| e.quic.as_str()).collect::<Vec<_>>(), ["a:1", "c:1"]);
    }

    #[test]
    fn records_of_hubs_outside_the_membership_are_strays() {
        let members = std::collections::BTreeSet::from([1, 3]);
        assert_eq!(strays(&[record(1, "a:1"), record(2, "b:1"), record(3, "c:1")], &members), ["hub-2"]);
    }

    #[test]
    fn the_tcp_endpoint_keeps_the_host() {
        assert_eq!(tcp_endpoint("hub.example:7441", 443), "hub.example:443");
        assert_eq!(tcp_endpoint("[::1]:7441", 7442), "[::1]:7442");
    }
}
