//! The nftables ruleset of the device's isolated apps (pure): the set of apps in,
//! one `nft -f -` script out, which replaces our table in a single transaction
//! (declare it, delete it, declare it whole), so no packet ever sees half a policy.
//!
//! What it says, in table `inet <table>`:
//! - `prerouting`/`output` (nat): a packet for one of the device's own addresses
//!   (`fib daddr type local`, so from outside and from the device itself) on a
//!   published `hostPort` is DNATed to the app's address and `containerPort`;
//! - `postrouting` (nat): what leaves the bridge's network is masqueraded; so is
//!   what reached a pod through a published port from the device's loopback (the
//!   bridge has `route_localnet`) or from another pod (hairpin), so replies come back
//!   the way they went;
//! - `forward` (filter): replies (`ct state established,related`) pass; a packet from
//!   an app with an egress policy goes through its `egress_<app>` chain, then a packet
//!   from a pod to an app with an ingress policy through `ingress_<app>`. A chain
//!   `return`s what it allows and drops the rest. An unset list allows everything, an
//!   empty one nothing; apps named in a policy but not isolated on this device match
//!   nothing. Pod-to-pod traffic is bridged, and reaches `forward` through the
//!   bridge netfilter hook (`bridge-nf-call-iptables`, which the agent turns on).
//!
//! The device's own addresses are not filtered: a pod reaches the host's services
//! (and host-network apps) through the `input` hook, which the policy leaves alone.
//! Pods have IPv4 only, so IPv6 networks in `egressCidrs` match nothing here.

use super::{IsolatedApp, NetConfig};
use shared_proto::resource::Protocol;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

/// A chain name for an app. App names are DNS labels, or `name.namespace` for apps of
/// other namespaces than the default: `-` becomes `_` and `.` becomes `__`, neither of
/// which they contain, so names stay distinct and the chain is a plain nft identifier.
fn chain(prefix: &str, app: &str) -> String {
    format!("{prefix}_{}", app.replace('-', "_").replace('.', "__"))
}

fn set(items: &[String]) -> String {
    format!("{{ {} }}", items.join(", "))
}

/// The IPv4 networks of `cidrs`, host bits cleared (IPv6 and malformed ones left out:
/// the hub validated the list; pods have no IPv6).
fn v4_networks(cidrs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = cidrs
        .iter()
        .filter_map(|c| match shared_proto::validate::parse_cidr(c)? {
            (IpAddr::V4(a), prefix) => {
                let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
                Some(format!("{}/{prefix}", Ipv4Addr::from(u32::from(a) & mask)))
            }
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Addresses of the apps named in `names` that are isolated on this device.
fn addresses_of(apps: &[IsolatedApp], names: &[String]) -> Vec<String> {
    apps.iter().filter(|a| names.contains(&a.name)).map(|a| a.address.to_string()).collect()
}

/// The whole script for `apps` (sorted by name, as [`super::plan`] gives them).
pub fn ruleset(cfg: &NetConfig, apps: &[IsolatedApp]) -> String {
    let t = &cfg.table;
    let net = cfg.subnet.to_string();
    let mut s = String::new();
    // Declaring then deleting makes the delete succeed whether or not it existed.
    let _ = writeln!(s, "table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{");

    s.push_str("\tchain published {\n");
    for a in apps {
        let peers: Vec<String> = a.site_peers.iter().map(Ipv4Addr::to_string).collect();
        for p in &a.published {
            let proto = match p.protocol {
                Protocol::TCP => "tcp",
                Protocol::UDP => "udp",
            };
            if peers.is_empty() {
                let _ = writeln!(
                    s,
                    "\t\t{proto} dport {} dnat ip to {}:{} comment \"{}\"",
                    p.host_port, a.address, p.container_port, a.name
                );
                continue;
            }
            // What a peer sent on is served here: a connection is balanced once.
            let _ = writeln!(
                s,
                "\t\tip saddr {} {proto} dport {} dnat ip to {}:{} comment \"{}\"",
                set(&peers),
                p.host_port,
                a.address,
                p.container_port,
                a.name
            );
            // Anything else: this pod or a peer's published port, at random.
            let mut targets = vec![format!("0 : {} . {}", a.address, p.container_port)];
            for (i, peer) in peers.iter().enumerate() {
                targets.push(format!("{} : {peer} . {}", i + 1, p.host_port));
            }
            let _ = writeln!(
                s,
                "\t\t{proto} dport {} dnat ip to numgen random mod {} map {{ {} }} comment \"{}\"",
                p.host_port,
                targets.len(),
                targets.join(", "),
                a.name
            );
        }
    }
    s.push_str("\t}\n");
    // `dstnat` is -100; nft 1.0 accepts the name only for prerouting.
    for hook in ["prerouting", "output"] {
        let _ = writeln!(
            s,
            "\tchain {hook} {{\n\t\ttype nat hook {hook} priority -100; policy accept;\n\t\tfib daddr type local jump published\n\t}}"
        );
    }
    // Sent on to a site peer: from this device's address, so the reply comes back
    // here to be translated back for the client.
    let all_peers: Vec<String> = {
        let mut v: Vec<String> = apps.iter().flat_map(|a| &a.site_peers).map(Ipv4Addr::to_string).collect();
        v.sort();
        v.dedup();
        v
    };
    let to_peers = if all_peers.is_empty() {
        String::new()
    } else {
        format!("\t\tct status dnat ip daddr {} masquerade\n", set(&all_peers))
    };
    let _ = writeln!(
        s,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {net} ip daddr != {net} masquerade\n\
         \t\tip saddr 127.0.0.0/8 ip daddr {net} masquerade\n\
         \t\tip saddr {net} ip daddr {net} ct status dnat masquerade\n{to_peers}\t}}"
    );

    let _ = writeln!(
        s,
        "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct state established,related accept"
    );
    let mut chains = String::new();
    for a in apps {
        let Some(p) = &a.policy else { continue };
        if p.egress_apps.is_none() && p.egress_cidrs.is_none() {
            continue;
        }
        let name = chain("egress", &a.name);
        let _ = writeln!(s, "\t\tip saddr {} jump {name}", a.address);
        let _ = writeln!(chains, "\tchain {name} {{");
        match &p.egress_apps {
            None => {
                let _ = writeln!(chains, "\t\tip daddr {net} return");
            }
            Some(names) => {
                let allowed = addresses_of(apps, names);
                if !allowed.is_empty() {
                    let _ = writeln!(chains, "\t\tip daddr {} return", set(&allowed));
                }
                let _ = writeln!(chains, "\t\tip daddr {net} drop");
            }
        }
        if let Some(cidrs) = &p.egress_cidrs {
            let allowed = v4_networks(cidrs);
            if !allowed.is_empty() {
                let _ = writeln!(chains, "\t\tip daddr {} return", set(&allowed));
            }
            chains.push_str("\t\tdrop\n");
        }
        chains.push_str("\t}\n");
    }
    for a in apps {
        let Some(names) = a.policy.as_ref().and_then(|p| p.ingress_apps.as_ref()) else { continue };
        let name = chain("ingress", &a.name);
        let _ = writeln!(s, "\t\tip saddr {net} ip daddr {} jump {name}", a.address);
        let _ = writeln!(chains, "\tchain {name} {{");
        let allowed = addresses_of(apps, names);
        if !allowed.is_empty() {
            let _ = writeln!(chains, "\t\tip saddr {} return", set(&allowed));
        }
        chains.push_str("\t\tdrop\n\t}\n");
    }
    s.push_str("\t}\n");
    s.push_str(&chains);
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Published;
    use shared_proto::workload::NetworkPolicy;

    fn app(name: &str, last: u8, policy: Option<NetworkPolicy>) -> IsolatedApp {
        IsolatedApp {
            name: name.into(),
            address: Ipv4Addr::new(10, 88, 0, last),
            published: vec![],
            policy,
            site_peers: vec![],
        }
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().map(str::trim).collect()
    }

    #[test]
    fn chain_names_stay_distinct_and_plain_for_namespaced_apps() {
        assert_eq!(chain("egress", "web.pos"), "egress_web__pos");
        assert_eq!(chain("egress", "till-2"), "egress_till_2");
        assert_ne!(chain("egress", "a-b.c"), chain("egress", "a.b-c"));
        assert!(chain("ingress", "web.pos").bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }

    /// The lines of one chain's body.
    fn chain_body<'a>(s: &'a str, name: &str) -> Vec<&'a str> {
        let all = lines(s);
        let start = all
            .iter()
            .position(|l| *l == format!("chain {name} {{"))
            .unwrap_or_else(|| panic!("no chain {name} in\n{s}"));
        all[start + 1..].iter().take_while(|l| **l != "}").copied().collect()
    }

    #[test]
    fn apps_without_policies_are_only_natted_and_published() {
        let mut web = app("web", 2, None);
        web.published = vec![
            Published { protocol: Protocol::TCP, host_port: 8080, container_port: 80 },
            Published { protocol: Protocol::UDP, host_port: 5353, container_port: 53 },
        ];
        let s = ruleset(&NetConfig::default(), &[web, app("db", 3, None)]);
        assert!(
            s.starts_with("table inet flotilla {}\ndelete table inet flotilla\ntable inet flotilla {\n"),
            "{s}"
        );
        assert_eq!(
            chain_body(&s, "published"),
            [
                "tcp dport 8080 dnat ip to 10.88.0.2:80 comment \"web\"",
                "udp dport 5353 dnat ip to 10.88.0.2:53 comment \"web\""
            ]
        );
        assert!(chain_body(&s, "output").contains(&"fib daddr type local jump published"));
        assert!(
            chain_body(&s, "postrouting")
                .contains(&"ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade")
        );
        assert_eq!(
            chain_body(&s, "forward"),
            [
                "type filter hook forward priority filter; policy accept;",
                "ct state established,related accept"
            ],
            "no policy: nothing filtered"
        );
        assert!(!s.contains("egress_") && !s.contains("ingress_"));
    }

    #[test]
    fn published_ports_are_balanced_across_the_site_and_a_peers_connection_stays_here() {
        let mut web = app("web", 2, None);
        web.published = vec![Published { protocol: Protocol::TCP, host_port: 8080, container_port: 80 }];
        web.site_peers = vec![Ipv4Addr::new(192, 168, 1, 11), Ipv4Addr::new(192, 168, 1, 12)];
        let s = ruleset(&NetConfig::default(), &[web]);
        assert_eq!(
            chain_body(&s, "published"),
            [
                "ip saddr { 192.168.1.11, 192.168.1.12 } tcp dport 8080 dnat ip to 10.88.0.2:80 comment \"web\"",
                "tcp dport 8080 dnat ip to numgen random mod 3 map { 0 : 10.88.0.2 . 80, 1 : 192.168.1.11 . 8080, 2 : 192.168.1.12 . 8080 } comment \"web\""
            ]
        );
        assert!(
            chain_body(&s, "postrouting")
                .contains(&"ct status dnat ip daddr { 192.168.1.11, 192.168.1.12 } masquerade"),
            "{s}"
        );
        // The script is one nftables accepts (the test command installs nft).
        let mut nft = std::process::Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft is installed (apt-get install nftables)");
        std::io::Write::write_all(&mut nft.stdin.take().expect("stdin"), s.as_bytes()).unwrap();
        let out = nft.wait_with_output().unwrap();
        assert!(out.status.success(), "{}\n{s}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn an_ingress_list_admits_only_the_apps_it_names() {
        let server = app(
            "server",
            2,
            Some(NetworkPolicy {
                ingress_apps: Some(vec!["allowed".into(), "elsewhere".into()]),
                ..Default::default()
            }),
        );
        let s = ruleset(&NetConfig::default(), &[app("allowed", 3, None), app("blocked", 4, None), server]);
        assert!(
            chain_body(&s, "forward")
                .contains(&"ip saddr 10.88.0.0/16 ip daddr 10.88.0.2 jump ingress_server")
        );
        assert_eq!(
            chain_body(&s, "ingress_server"),
            ["ip saddr { 10.88.0.3 } return", "drop"],
            "an app not on this device matches nothing"
        );
        // Replies are accepted before any policy.
        let fwd = chain_body(&s, "forward");
        assert_eq!(fwd[1], "ct state established,related accept");
    }

    #[test]
    fn empty_lists_deny_and_unset_lists_allow() {
        let closed = app(
            "closed-app",
            2,
            Some(NetworkPolicy {
                ingress_apps: Some(vec![]),
                egress_apps: Some(vec![]),
                egress_cidrs: Some(vec![]),
            }),
        );
        let open = app("open", 3, Some(NetworkPolicy::default()));
        let s = ruleset(&NetConfig::default(), &[closed, open]);
        assert_eq!(chain_body(&s, "egress_closed_app"), ["ip daddr 10.88.0.0/16 drop", "drop"]);
        assert_eq!(chain_body(&s, "ingress_closed_app"), ["drop"]);
        assert!(!s.contains("egress_open") && !s.contains("ingress_open"), "all unset: no chain\n{s}");
    }

    #[test]
    fn egress_to_networks_beyond_the_device() {
        let a = app(
            "sensor",
            2,
            Some(NetworkPolicy {
                egress_cidrs: Some(vec![
                    "203.0.113.7/24".into(),
                    "2001:db8::/32".into(),
                    "10.0.0.0/8".into(),
                ]),
                egress_apps: Some(vec!["broker".into()]),
                ..Default::default()
            }),
        );
        let s = ruleset(&NetConfig::default(), &[app("broker", 3, None), a]);
        assert!(chain_body(&s, "forward").contains(&"ip saddr 10.88.0.2 jump egress_sensor"));
        assert_eq!(
            chain_body(&s, "egress_sensor"),
            [
                "ip daddr { 10.88.0.3 } return",
                "ip daddr 10.88.0.0/16 drop",
                "ip daddr { 10.0.0.0/8, 203.0.113.0/24 } return",
                "drop"
            ],
            "host bits cleared, IPv6 left out"
        );
        // Only other apps restricted, the outside free.
        let b = app("b", 4, Some(NetworkPolicy { egress_apps: Some(vec![]), ..Default::default() }));
        let s = ruleset(&NetConfig::default(), &[b]);
        assert_eq!(chain_body(&s, "egress_b"), ["ip daddr 10.88.0.0/16 drop"]);
    }

    #[test]
    fn the_table_and_network_come_from_the_config() {
        let cfg = NetConfig {
            bridge: "br-test".into(),
            subnet: crate::net::Subnet::parse("172.30.0.0/24").unwrap(),
            table: "flt_test".into(),
        };
        let s = ruleset(&cfg, &[app("a", 2, None)]);
        assert!(s.starts_with("table inet flt_test {}\ndelete table inet flt_test\n"), "{s}");
        assert!(s.contains("ip saddr 172.30.0.0/24 ip daddr != 172.30.0.0/24 masquerade"), "{s}");
    }
}
