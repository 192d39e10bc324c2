//! Device networking for `network: Isolated` apps: one bridge per device, a veth pair
//! per isolated pod with an address on the bridge's network, outbound NAT, published
//! host ports, names of the other isolated apps in each pod's `/etc/hosts`, and each
//! app's network policy in an nftables table of our own.
//!
//! Pure cores, I/O at the edge:
//! - [`ipam`] gives apps addresses (an [`ipam::AddressBook`], stored in the state
//!   database so an app keeps its address across agent restarts and reboots);
//! - [`rules`] turns the set of isolated apps into the whole nftables ruleset;
//! - [`hosts`] writes a pod's `/etc/hosts`;
//! - [`plan`] ties them together: desired apps and addresses in, [`NetPlan`] out;
//! - [`device`] is the shell: `ip` for links, `nft -f -` for the ruleset, sysctls.

pub mod device;
pub mod hosts;
pub mod ipam;
pub mod link;
pub mod rules;

use shared_proto::NetworkMode;
use shared_proto::manifest::DesiredApp;
use shared_proto::resource::Protocol;
use shared_proto::workload::NetworkPolicy;
use std::net::Ipv4Addr;

/// Default bridge name, network and nftables table.
pub const DEFAULT_BRIDGE: &str = "flotilla0";
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
pub const DEFAULT_TABLE: &str = "flotilla";

/// An IPv4 network such as `10.88.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/n` with 8 ≤ n ≤ 28 (room for at least a dozen apps) and no
    /// host bits set.
    pub fn parse(s: &str) -> Result<Subnet, String> {
        let bad = || format!("{s:?} is not an IPv4 network such as 10.88.0.0/16 (prefix 8 to 28)");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let network: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=28).contains(&prefix) {
            return Err(bad());
        }
        let subnet = Subnet { network, prefix };
        if u32::from(network) & !subnet.mask() != 0 {
            return Err(format!(
                "{s:?} has host bits set: use {}",
                Subnet { network: subnet.first(), prefix }
            ));
        }
        Ok(subnet)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) & self.mask())
    }

    /// The bridge's own address, every pod's default route: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.network)
    }

    /// Addresses apps may get: all but the network, the gateway and broadcast.
    pub fn n_app_addresses(&self) -> u32 {
        (1u32 << (32 - u32::from(self.prefix))) - 3
    }

    /// The `idx`-th app address (`idx < n_app_addresses`).
    pub fn app_address(&self, idx: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2 + idx)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Where isolated apps live on this device (from the agent's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub bridge: String,
    pub subnet: Subnet,
    /// The nftables table, family `inet`.
    pub table: String,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            bridge: DEFAULT_BRIDGE.into(),
            subnet: Subnet::parse(DEFAULT_SUBNET).expect("the default subnet parses"),
            table: DEFAULT_TABLE.into(),
        }
    }
}

/// A port of an isolated app published on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    pub protocol: Protocol,
    pub host_port: u16,
    pub container_port: u16,
}

/// What the ruleset needs to know of one isolated app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolatedApp {
    pub name: String,
    pub address: Ipv4Addr,
    pub published: Vec<Published>,
    pub policy: Option<NetworkPolicy>,
    /// The other devices of the site that run it, ready: its published ports are
    /// balanced across them and this device's own pod.
    pub site_peers: Vec<Ipv4Addr>,
}

/// Everything the device's network should be, for one desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// The isolated apps that have an address, sorted by name.
    pub apps: Vec<IsolatedApp>,
    /// The whole nftables script (`nft -f -`), empty when no app is isolated.
    pub ruleset: String,
}

impl NetPlan {
    /// Isolated apps by name and address, for `/etc/hosts`.
    pub fn peers(&self) -> Vec<(String, Ipv4Addr)> {
        self.apps.iter().map(|a| (a.name.clone(), a.address)).collect()
    }
}

/// The isolated apps of a desired state, by name.
pub fn isolated(apps: &[DesiredApp]) -> impl Iterator<Item = &DesiredApp> {
    apps.iter().filter(|a| a.network == NetworkMode::Isolated)
}

/// Desired apps and their addresses in, the device's network out. Apps without an
/// address yet are left out (the shell allocates before it plans).
pub fn plan(
    cfg: &NetConfig,
    apps: &[DesiredApp],
    book: &ipam::AddressBook,
    site_peers: &[shared_proto::wire::AppPeers],
) -> NetPlan {
    let mut out: Vec<IsolatedApp> = isolated(apps)
        .filter_map(|a| {
            let address = book.get(&a.name)?;
            let mut published: Vec<Published> = a
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .filter_map(|p| {
                    Some(Published {
                        protocol: p.protocol,
                        host_port: p.host_port?,
                        container_port: p.container_port,
                    })
                })
                .collect();
            published.sort();
            published.dedup();
            let mut peers: Vec<Ipv4Addr> = site_peers
                .iter()
                .filter(|p| p.app == a.name)
                .flat_map(|p| &p.addresses)
                .filter_map(|ip| ip.parse().ok())
                .collect();
            peers.sort();
            peers.dedup();
            let site_peers = if published.is_empty() { vec![] } else { peers };
            Some(IsolatedApp {
                name: a.name.clone(),
                address,
                published,
                policy: a.network_policy.clone(),
                site_peers,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    let ruleset = if out.is_empty() { String::new() } else { rules::ruleset(cfg, &out) };
    NetPlan { apps: out, ruleset }
}

/// How often the agent looks whether its addresses changed (DHCP renewals are rare).
pub const ADDRESS_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// The device's IPv4 addresses on its site's network, for its site peers to balance
/// published ports to: every address of an interface that is up, but loopback and
/// the isolated apps' own network. Sorted; at most [`shared_proto::wire::MAX_ADDRESSES`].
pub fn site_addresses(cfg: &NetConfig) -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return vec![] };
    let mut out: Vec<Ipv4Addr> = addrs
        .filter(|i| {
            i.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                && !i.flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
        .filter(|a| !a.is_loopback() && !a.is_link_local() && !cfg.subnet.contains(*a))
        .collect();
    out.sort();
    out.dedup();
    out.truncate(shared_proto::wire::MAX_ADDRESSES);
    out.into_iter().map(|a| a.to_string()).collect()
}

/// 32-bit FNV-1a: a hash that never changes between builds (names and first-choice
/// addresses derive from it).
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The host side of an app's veth pair: `fl` and 8 hex digits of the bridge and app
/// (interface names are at most 15 bytes; app names are up to 63).
pub fn veth_name(bridge: &str, app: &str) -> String {
    format!("fl{:08x}", fnv1a(format!("{bridge}/{app}").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::manifest::DesiredContainer;
    use shared_proto::resource::PortSpec;

    #[test]
    fn subnets_parse_and_count() {
        let s = Subnet::parse("10.88.0.0/16").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(s.app_address(0), Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(s.n_app_addresses(), 65533);
        assert_eq!(s.app_address(s.n_app_addresses() - 1), Ipv4Addr::new(10, 88, 255, 254));
        assert!(s.contains(Ipv4Addr::new(10, 88, 3, 4)) && !s.contains(Ipv4Addr::new(10, 89, 0, 1)));
        assert!(Subnet::parse("10.88.0.1/16").unwrap_err().contains("use 10.88.0.0/16"));
        for bad in ["10.88.0.0", "10.88.0.0/30", "10.88.0.0/4", "fd00::/64", "x/16"] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plan_takes_isolated_apps_with_an_address_and_their_host_ports() {
        let port = |cp, hp| PortSpec { container_port: cp, host_port: hp, ..Default::default() };
        let apps = vec![
            DesiredApp {
                name: "web".into(),
                network: NetworkMode::Isolated,
                containers: vec![DesiredContainer {
                    ports: vec![port(80, Some(8080)), port(9090, None)],
                    ..Default::default()
                }],
                ..Default::default()
            },
            DesiredApp { name: "host".into(), network: NetworkMode::Host, ..Default::default() },
            DesiredApp { name: "later".into(), network: NetworkMode::Isolated, ..Default::default() },
        ];
        let cfg = NetConfig::default();
        let mut book = ipam::AddressBook::new(cfg.subnet);
        assert_eq!(plan(&cfg, &apps, &book, &[]), NetPlan { apps: vec![], ruleset: String::new() });
        book.update(&["web"], &[]).unwrap();
        let p = plan(&cfg, &apps, &book, &[]);
        assert_eq!(p.apps.len(), 1, "only web has an address");
        assert_eq!(
            p.apps[0].published,
            vec![Published { protocol: Protocol::TCP, host_port: 8080, container_port: 80 }],
            "a port without hostPort is not published"
        );
        assert!(p.ruleset.contains("dnat ip to"), "{}", p.ruleset);
    }

    #[test]
    fn veth_names_fit_the_kernel_limit_and_differ_per_bridge() {
        let long = "a".repeat(63);
        assert_eq!(veth_name("flotilla0", &long).len(), 10);
        assert_ne!(veth_name("flotilla0", "web"), veth_name("flt1", "web"));
        assert_eq!(veth_name("flotilla0", "web"), veth_name("flotilla0", "web"));
    }
}
