//! The address devices are told to reach this hub at (`flotilla token create` prints
//! it into the agent's configuration). A hub bound to every interface (`0.0.0.0`,
//! `::`) listens on loopback too, but a device cannot reach it there: the address is
//! the first `--advertise` name, else the one address the hub is bound to, else a
//! non-loopback address of this machine, else none, and the operator is told to pass
//! `--advertise`. The choice is pure ([`choose`]); [`interface_addresses`] reads the
//! machine.

use std::net::{IpAddr, SocketAddr};

/// Why no address could be chosen; says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the hub listens for agents on every interface ({bound}) and this machine has no address but loopback, which devices cannot reach: restart the hub with --advertise <the DNS name or address devices reach it at>"
)]
pub struct NoAddress {
    pub bound: SocketAddr,
}

/// The `host:port` devices should dial, for agents listening at `bound` (QUIC; the TCP
/// fallback shares its port number by default). `advertise` holds the hub's
/// `--advertise` names (DNS names or IP addresses, no ports), `interfaces` this
/// machine's addresses.
pub fn choose(advertise: &[String], bound: SocketAddr, interfaces: &[IpAddr]) -> Result<String, NoAddress> {
    let port = bound.port();
    if let Some(name) = advertise.first() {
        return Ok(match name.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port).to_string(),
            Err(_) => format!("{name}:{port}"),
        });
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    // Bound to every address of its family: the first that others can reach, IPv4
    // first on an IPv4 socket (an IPv6 one may take either, as dual-stack).
    let reachable = |ip: &&IpAddr| match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && !v6.is_unicast_link_local() && bound.is_ipv6()
        }
    };
    let v4 = interfaces.iter().filter(reachable).find(|ip| ip.is_ipv4());
    let any = interfaces.iter().find(reachable);
    match v4.or(any) {
        Some(ip) => Ok(SocketAddr::new(*ip, port).to_string()),
        None => Err(NoAddress { bound }),
    }
}

/// The addresses of this machine's interfaces that are up, in the kernel's order.
pub fn interface_addresses() -> Vec<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter(|a| a.flags.contains(InterfaceFlags::IFF_UP))
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn advertise_wins_then_the_bound_address_then_an_interface() {
        let any4: SocketAddr = "0.0.0.0:7441".parse().unwrap();
        let machine = ips(&["127.0.0.1", "::1", "fe80::1", "192.0.2.2", "fd00::2"]);
        assert_eq!(choose(&["hub.example".into()], any4, &machine).unwrap(), "hub.example:7441");
        assert_eq!(
            choose(&["2001:db8::7".into(), "x".into()], any4, &machine).unwrap(),
            "[2001:db8::7]:7441"
        );
        assert_eq!(choose(&[], "10.1.2.3:9".parse().unwrap(), &machine).unwrap(), "10.1.2.3:9");
        // Bound to loopback on purpose: loopback is where it can be reached.
        assert_eq!(choose(&[], "127.0.0.1:9".parse().unwrap(), &machine).unwrap(), "127.0.0.1:9");
        assert_eq!(choose(&[], any4, &machine).unwrap(), "192.0.2.2:7441");
        let any6: SocketAddr = "[::]:7441".parse().unwrap();
        assert_eq!(choose(&[], any6, &ips(&["::1", "fe80::1", "fd00::2"])).unwrap(), "[fd00::2]:7441");
        assert_eq!(choose(&[], any6, &machine).unwrap(), "192.0.2.2:7441", "IPv4 first, dual-stack");
    }

    #[test]
    fn never_loopback_for_a_hub_on_every_interface() {
        let any4: SocketAddr = "0.0.0.0:7441".parse().unwrap();
        for machine in [ips(&[]), ips(&["127.0.0.1", "::1", "169.254.3.4", "fe80::1"]), ips(&["fd00::2"])] {
            let err = choose(&[], any4, &machine).unwrap_err();
            assert!(err.to_string().contains("--advertise"), "{err}");
        }
    }
}
