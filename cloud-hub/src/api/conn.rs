//! Connection slots for the HTTPS API, so that neither slow nor idle clients can lock
//! operators out: a bound on connections in all and on connections per client
//! address, taken at accept and given back when the connection ends. A connection
//! that finds no slot is closed at once instead of waiting in the kernel's backlog,
//! so the accept loop always keeps up and `/healthz` always answers.
//!
//! Deadlines do the rest (see `serve_tls`): the TLS handshake, each request's headers
//! and each JSON request as a whole have one; an idle keep-alive connection is closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once, from all clients.
    pub total: usize,
    /// Connections served at once from one client address.
    pub per_client: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { total: 4096, per_client: 64 }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Total,
    Client,
}

#[derive(Debug, Clone)]
pub struct Slots {
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

/// A taken slot; dropping it gives it back.
#[derive(Debug)]
pub struct Slot {
    client: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl Slots {
    pub fn new(limits: Limits) -> Slots {
        Slots { limits, counts: Arc::default() }
    }

    pub fn take(&self, client: IpAddr) -> Result<Slot, Full> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.limits.total {
            return Err(Full::Total);
        }
        let n = c.by_client.entry(client).or_default();
        if *n >= self.limits.per_client {
            return Err(Full::Client);
        }
        *n += 1;
        c.total += 1;
        Ok(Slot { client, counts: self.counts.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total -= 1;
        if let Some(n) = c.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                c.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_take_every_slot() {
        let slots = Slots::new(Limits { total: 5, per_client: 2 });
        let (a, b, c) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), Full::Client);
        let _b = [slots.take(b).unwrap(), slots.take(b).unwrap()];
        let _c = slots.take(c).unwrap();
        assert_eq!(slots.take(c).unwrap_err(), Full::Total);
        drop(a1);
        assert!(slots.take(a).is_ok(), "a closed connection gives its slot back");
    }
}
