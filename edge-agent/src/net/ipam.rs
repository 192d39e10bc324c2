//! Addresses of isolated apps on the device bridge (pure).
//!
//! Each app is given an address once and keeps it: the book is stored in the state
//! database (`BridgeAddresses`) after every change and read back at start, so after
//! an agent restart the addresses still match the pods that kept running, and after a
//! reboot every app comes back at the address the others' `/etc/hosts` and policies
//! knew. A stored book beats deriving addresses afresh, which would move an app whose
//! first choice was taken by an app that has since left.
//!
//! The first choice is still derived from the name (a hash into the network, then the
//! next free address), so a device that lost its database gives most apps their
//! old address again.

use super::{Subnet, fnv1a};
use shared_proto::agent_state::BridgeAddresses;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("no address left in {subnet} for app {app}: set a larger bridge_subnet in the agent's config")]
    Exhausted { subnet: Subnet, app: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressBook {
    subnet: Subnet,
    by_app: BTreeMap<String, Ipv4Addr>,
}

impl AddressBook {
    pub fn new(subnet: Subnet) -> AddressBook {
        AddressBook { subnet, by_app: BTreeMap::new() }
    }

    /// The stored book, when it was made for this network; otherwise an empty one
    /// (the operator changed `bridge_subnet`: every app is given a new address).
    pub fn from_record(subnet: Subnet, record: Option<&BridgeAddresses>) -> AddressBook {
        let mut book = AddressBook::new(subnet);
        if let Some(r) = record.filter(|r| r.subnet == subnet.to_string()) {
            for (app, a) in &r.apps {
                let a = Ipv4Addr::from(*a);
                if subnet.contains(a) && a != subnet.gateway() && !book.by_app.values().any(|b| *b == a) {
                    book.by_app.insert(app.clone(), a);
                }
            }
        }
        book
    }

    pub fn to_record(&self) -> BridgeAddresses {
        BridgeAddresses {
            subnet: self.subnet.to_string(),
            apps: self.by_app.iter().map(|(k, v)| (k.clone(), v.octets())).collect(),
        }
    }

    pub fn get(&self, app: &str) -> Option<Ipv4Addr> {
        self.by_app.get(app).copied()
    }

    /// Gives every app in `wanted` an address, keeps the addresses of `keep` (apps
    /// whose pod still exists, on its way out) and frees the rest. Returns whether
    /// the book changed (and must be stored).
    pub fn update(&mut self, wanted: &[&str], keep: &[&str]) -> Result<bool, IpamError> {
        let before = self.by_app.len();
        self.by_app.retain(|app, _| wanted.contains(&app.as_str()) || keep.contains(&app.as_str()));
        let mut changed = self.by_app.len() != before;
        for app in wanted {
            changed |= self.assign(app)?.1;
        }
        Ok(changed)
    }

    /// The app's address, given now if it has none (then `true`: store the book).
    pub fn assign(&mut self, app: &str) -> Result<(Ipv4Addr, bool), IpamError> {
        if let Some(a) = self.get(app) {
            return Ok((a, false));
        }
        let a = self.free_address(app)?;
        self.by_app.insert(app.to_string(), a);
        Ok((a, true))
    }

    fn free_address(&self, app: &str) -> Result<Ipv4Addr, IpamError> {
        let n = self.subnet.n_app_addresses();
        let taken: std::collections::BTreeSet<Ipv4Addr> = self.by_app.values().copied().collect();
        let start = fnv1a(app.as_bytes()) % n;
        (0..n)
            .map(|k| self.subnet.app_address((start + k) % n))
            .find(|a| !taken.contains(a))
            .ok_or_else(|| IpamError::Exhausted { subnet: self.subnet, app: app.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Subnet {
        Subnet::parse("10.9.0.0/28").unwrap()
    }

    #[test]
    fn addresses_are_distinct_stable_and_freed_only_when_neither_wanted_nor_kept() {
        let mut book = AddressBook::new(small());
        assert!(book.update(&["a", "b", "c"], &[]).unwrap());
        let (a, b, c) = (book.get("a").unwrap(), book.get("b").unwrap(), book.get("c").unwrap());
        assert!(a != b && b != c && a != c);
        for x in [a, b, c] {
            assert!(small().contains(x) && x != small().gateway() && x != Ipv4Addr::new(10, 9, 0, 0));
            assert_ne!(x, Ipv4Addr::new(10, 9, 0, 15), "not the broadcast address");
        }
        assert!(!book.update(&["a", "b", "c"], &[]).unwrap(), "idempotent");
        // b leaves the desired state but its pod is still there: it keeps its address.
        assert!(!book.update(&["a", "c"], &["b"]).unwrap());
        assert_eq!(book.get("b"), Some(b));
        // Gone for good: freed. Those that stay never move.
        assert!(book.update(&["a", "c", "d"], &[]).unwrap());
        assert_eq!((book.get("a"), book.get("b"), book.get("c")), (Some(a), None, Some(c)));
    }

    #[test]
    fn the_book_survives_a_round_trip_and_a_changed_subnet_starts_afresh() {
        let mut book = AddressBook::new(small());
        book.update(&["a", "b"], &[]).unwrap();
        let record = book.to_record();
        let bytes = record.encode().unwrap();
        let back = shared_proto::agent_state::BridgeAddresses::decode(&bytes).unwrap();
        assert_eq!(AddressBook::from_record(small(), Some(&back)), book);
        let other = Subnet::parse("10.10.0.0/24").unwrap();
        assert_eq!(AddressBook::from_record(other, Some(&back)), AddressBook::new(other));
    }

    #[test]
    fn a_full_network_says_what_to_do() {
        let mut book = AddressBook::new(small());
        let names: Vec<String> = (0..13).map(|i| format!("app{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        book.update(&refs, &[]).unwrap();
        let mut more = refs.clone();
        more.push("one-too-many");
        let e = book.update(&more, &[]).unwrap_err();
        assert!(e.to_string().contains("bridge_subnet"), "{e}");
    }
}
