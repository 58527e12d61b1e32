//! Network rules in the kernel's form, and the egress decision over several
//! policies.
//!
//! The kernel stores every address as IPv6, an IPv4 address `a.b.c.d` as
//! `::ffff:a.b.c.d`, in four `u32` words laid out like
//! `bpf_sock_addr.user_ip6`. Word `i` contains octets `4i..4i+4` in network
//! byte order, read as a native `u32` (`u32::from_ne_bytes`).

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use parapet_common::net::{MAX_NET_RULES, NetPolicy, NetRule, PROTOCOL_ANY, RULE_IPV6_ONLY};
use parapet_common::{Mode, Verdict};

use super::model::{Policy, Protocol};

/// Returns `addr` in the layout of `NetRule::addr`.
pub fn kernel_addr(addr: IpAddr) -> [u32; 4] {
    let v6 = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    kernel_words(v6.octets())
}

/// Returns the address of a kernel record (`NetRule::addr`,
/// `NetEvent::addr`). IPv4-mapped addresses come back as IPv4.
pub fn ip_from_kernel(words: [u32; 4]) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    IpAddr::V6(Ipv6Addr::from(octets)).to_canonical()
}

fn kernel_words(octets: [u8; 16]) -> [u32; 4] {
    std::array::from_fn(|i| {
        u32::from_ne_bytes([
            octets[4 * i],
            octets[4 * i + 1],
            octets[4 * i + 2],
            octets[4 * i + 3],
        ])
    })
}

/// Returns the address and mask words of `net`, with the address masked.
fn kernel_prefix(net: IpNet) -> ([u32; 4], [u32; 4]) {
    let (network, prefix_len) = match net {
        IpNet::V4(v4) => (v4.network().to_ipv6_mapped(), 96 + v4.prefix_len()),
        IpNet::V6(v6) => (v6.network(), v6.prefix_len()),
    };
    let mask_bits = u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0);
    let masked = u128::from(network) & mask_bits;
    (
        kernel_words(masked.to_be_bytes()),
        kernel_words(mask_bits.to_be_bytes()),
    )
}

/// Returns the kernel form of a policy's network section.
///
/// Each egress rule expands to one kernel rule per peer and port entry, in
/// file order. A rule without `ports` expands to one kernel rule per peer,
/// which allows every port over TCP and UDP. `NetworkPolicy` guarantees that
/// the rules fit in [`MAX_NET_RULES`].
pub fn net_policy(policy: &Policy) -> NetPolicy {
    let mut kernel = NetPolicy {
        mode: policy.mode as u32,
        ..NetPolicy::default()
    };
    let Some(egress) = policy.network.as_ref().and_then(|network| network.egress()) else {
        return kernel;
    };
    kernel.egress_restricted = 1;
    let mut count = 0;
    for (rule_index, rule) in egress.iter().enumerate() {
        let rule_number = u32::try_from(rule_index).expect("at most MAX_NET_RULES rules");
        for peer in &rule.to {
            let network = peer.network();
            let (addr, mask) = kernel_prefix(network);
            // IPv4 peers are stored as IPv4-mapped IPv6; an IPv6 prefix
            // such as `::/0` must not cover them.
            let flags = match network {
                IpNet::V4(_) => 0,
                IpNet::V6(_) => RULE_IPV6_ONLY,
            };
            let mut push = |port_min, port_max, protocol| {
                kernel.rules[count] = NetRule {
                    addr,
                    mask,
                    port_min,
                    port_max,
                    protocol,
                    rule: rule_number,
                    flags,
                };
                count += 1;
            };
            match &rule.ports {
                None => push(0, u16::MAX, PROTOCOL_ANY),
                Some(ports) => {
                    for range in ports {
                        let protocol = range.protocol.map_or(PROTOCOL_ANY, Protocol::number);
                        push(range.start, range.end, protocol);
                    }
                }
            }
        }
    }
    debug_assert!(count <= MAX_NET_RULES);
    kernel.rule_count = count as u32;
    kernel
}

/// The outcome of [`evaluate_egress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    pub verdict: Verdict,
    /// For `Deny` and `Audit`: the first policy, in the order given, that
    /// refused, preferring enforce-mode policies. For `Allow`: the first
    /// policy that restricts egress, or `None` when none does.
    pub policy: Option<&'a str>,
    /// For `Allow`: the index of the egress rule of `policy` that matched.
    /// `None` for a refusal, or when no policy restricts egress.
    pub rule: Option<usize>,
}

/// Decides an outgoing connection or datagram from a workload that
/// `policies` select, with the stricter-wins rule of the module
/// documentation, over the kernel form of each policy.
pub fn evaluate_egress<'a>(
    policies: &[&'a Policy],
    addr: IpAddr,
    port: u16,
    protocol: Protocol,
) -> Decision<'a> {
    let addr = kernel_addr(addr);
    let mut first_allow = None;
    let mut first_audit = None;
    for policy in policies {
        let kernel = net_policy(policy);
        if kernel.egress_restricted == 0 {
            continue;
        }
        let rules = &kernel.rules[..kernel.rule_count as usize];
        let matched = rules
            .iter()
            .find(|rule| rule.matches(&addr, port, protocol.number()));
        match (matched, policy.mode) {
            (Some(rule), _) => {
                first_allow.get_or_insert((policy.name.as_str(), rule.rule as usize));
            }
            (None, Mode::Enforce) => {
                return Decision {
                    verdict: Verdict::Deny,
                    policy: Some(&policy.name),
                    rule: None,
                };
            }
            (None, Mode::Audit) => {
                first_audit.get_or_insert(policy.name.as_str());
            }
        }
    }
    if let Some(name) = first_audit {
        return Decision {
            verdict: Verdict::Audit,
            policy: Some(name),
            rule: None,
        };
    }
    Decision {
        verdict: Verdict::Allow,
        policy: first_allow.map(|(name, _)| name),
        rule: first_allow.map(|(_, rule)| rule),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use parapet_common::net::{PROTOCOL_TCP, PROTOCOL_UDP};

    use super::*;
    use crate::policy::parse_str;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Parses one policy from a spec body (indented by two spaces).
    fn policy(name: &str, mode: &str, network: &str) -> Policy {
        let text = format!(
            "apiVersion: parapet.dev/v1alpha1\nkind: RuntimePolicy\nmetadata:\n  name: {name}\n\
             spec:\n  selector: {{namespace: clinic}}\n  mode: {mode}\n{network}"
        );
        let mut policies = parse_str(&text, Path::new("test.yaml"))
            .unwrap_or_else(|errors| panic!("{text}\n{errors:?}"));
        policies.remove(0)
    }

    fn egress(rules: &str) -> String {
        format!("  network:\n    egress:\n{rules}")
    }

    #[test]
    fn kernel_addr_maps_ipv4() {
        let words = kernel_addr(ip("10.0.0.1"));
        assert_eq!(words[0], 0);
        assert_eq!(words[1], 0);
        assert_eq!(words[2], u32::from_ne_bytes([0, 0, 0xff, 0xff]));
        assert_eq!(words[3], u32::from_ne_bytes([10, 0, 0, 1]));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn kernel_addr_matches_little_endian_user_ip6() {
        assert_eq!(
            kernel_addr(ip("10.0.0.1")),
            [0, 0, 0xffff_0000, 0x0100_000a]
        );
        assert_eq!(
            kernel_addr(ip("2001:db8::1")),
            [0xb80d_0120, 0, 0, 0x0100_0000]
        );
    }

    #[test]
    fn kernel_addr_ipv6() {
        let words = kernel_addr(ip("2001:db8::1"));
        assert_eq!(words[0], u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]));
        assert_eq!(words[1], 0);
        assert_eq!(words[2], 0);
        assert_eq!(words[3], u32::from_ne_bytes([0, 0, 0, 1]));
    }

    #[test]
    fn ip_from_kernel_round_trips() {
        for text in ["10.1.2.3", "0.0.0.0", "2001:db8::1", "::1", "fe80::1"] {
            assert_eq!(ip_from_kernel(kernel_addr(ip(text))), ip(text), "{text}");
        }
        assert_eq!(
            ip_from_kernel(kernel_addr(ip("::ffff:10.1.2.3"))),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn prefix_ipv4_slash_8() {
        let (addr, mask) = kernel_prefix("10.0.0.0/8".parse().unwrap());
        assert_eq!(
            addr,
            [
                0,
                0,
                u32::from_ne_bytes([0, 0, 0xff, 0xff]),
                u32::from_ne_bytes([10, 0, 0, 0])
            ]
        );
        assert_eq!(
            mask,
            [
                u32::MAX,
                u32::MAX,
                u32::MAX,
                u32::from_ne_bytes([0xff, 0, 0, 0])
            ]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn prefix_ipv4_slash_8_little_endian() {
        let (addr, mask) = kernel_prefix("10.0.0.0/8".parse().unwrap());
        assert_eq!(addr, [0, 0, 0xffff_0000, 0x0000_000a]);
        assert_eq!(mask, [u32::MAX, u32::MAX, u32::MAX, 0x0000_00ff]);
    }

    #[test]
    fn prefix_ipv4_edges() {
        let (addr, mask) = kernel_prefix("0.0.0.0/0".parse().unwrap());
        assert_eq!(addr, kernel_addr(ip("::ffff:0.0.0.0")));
        assert_eq!(mask, [u32::MAX, u32::MAX, u32::MAX, 0]);
        let (addr, mask) = kernel_prefix("10.1.2.3/32".parse().unwrap());
        assert_eq!(addr, kernel_addr(ip("10.1.2.3")));
        assert_eq!(mask, [u32::MAX; 4]);
        let (_, mask) = kernel_prefix("10.0.0.0/12".parse().unwrap());
        assert_eq!(mask[3], u32::from_ne_bytes([0xff, 0xf0, 0, 0]));
    }

    #[test]
    fn prefix_ipv6_edges() {
        let (addr, mask) = kernel_prefix("::/0".parse().unwrap());
        assert_eq!(addr, [0; 4]);
        assert_eq!(mask, [0; 4]);
        let (addr, mask) = kernel_prefix("fd00::/8".parse().unwrap());
        assert_eq!(addr, [u32::from_ne_bytes([0xfd, 0, 0, 0]), 0, 0, 0]);
        assert_eq!(mask, [u32::from_ne_bytes([0xff, 0, 0, 0]), 0, 0, 0]);
        let (_, mask) = kernel_prefix("2001:db8::/33".parse().unwrap());
        assert_eq!(mask, [u32::MAX, u32::from_ne_bytes([0x80, 0, 0, 0]), 0, 0]);
        let (_, mask) = kernel_prefix("::1/128".parse().unwrap());
        assert_eq!(mask, [u32::MAX; 4]);
    }

    #[test]
    fn net_policy_expands_peers_times_ports() {
        let policy = policy(
            "db",
            "audit",
            &egress(
                "      - to: [{cidr: 10.96.0.0/12}, {address: 10.1.2.3}]\n\
                 \x20       ports: [{port: 5432, protocol: TCP}, {port: 53, endPort: 54}]\n\
                 \x20     - to: [{address: 'fd00::1'}]\n",
            ),
        );

        let kernel = net_policy(&policy);
        assert_eq!(kernel.mode, Mode::Audit as u32);
        assert_eq!(kernel.egress_restricted, 1);
        assert_eq!(kernel.rule_count, 5);

        // Rule 0: the CIDR peer with each port entry, then the address peer.
        let (cidr_addr, cidr_mask) = kernel_prefix("10.96.0.0/12".parse().unwrap());
        assert_eq!(
            kernel.rules[0],
            NetRule {
                addr: cidr_addr,
                mask: cidr_mask,
                port_min: 5432,
                port_max: 5432,
                protocol: PROTOCOL_TCP,
                rule: 0,
                flags: 0,
            }
        );
        assert_eq!(
            kernel.rules[1],
            NetRule {
                addr: cidr_addr,
                mask: cidr_mask,
                port_min: 53,
                port_max: 54,
                protocol: PROTOCOL_ANY,
                rule: 0,
                flags: 0,
            }
        );
        assert_eq!(kernel.rules[2].addr, kernel_addr(ip("10.1.2.3")));
        assert_eq!(kernel.rules[2].mask, [u32::MAX; 4]);
        assert_eq!(kernel.rules[3].port_min, 53);

        // Rule 1 has no ports, so it allows every port over TCP and UDP.
        assert_eq!(
            kernel.rules[4],
            NetRule {
                addr: kernel_addr(ip("fd00::1")),
                mask: [u32::MAX; 4],
                port_min: 0,
                port_max: u16::MAX,
                protocol: PROTOCOL_ANY,
                rule: 1,
                flags: RULE_IPV6_ONLY,
            }
        );
        assert_eq!(kernel.rules[5], NetRule::default());
    }

    #[test]
    fn net_policy_without_network_is_unrestricted() {
        let kernel = net_policy(&policy("open", "enforce", ""));
        assert_eq!(kernel.mode, Mode::Enforce as u32);
        assert_eq!(kernel.egress_restricted, 0);
        assert_eq!(kernel.rule_count, 0);
    }

    #[test]
    fn net_policy_empty_egress_is_restricted() {
        let kernel = net_policy(&policy("closed", "enforce", "  network:\n    egress: []\n"));
        assert_eq!(kernel.egress_restricted, 1);
        assert_eq!(kernel.rule_count, 0);
    }

    #[test]
    fn net_policy_null_egress_is_restricted() {
        let kernel = net_policy(&policy("closed", "enforce", "  network:\n    egress:\n"));
        assert_eq!(kernel.egress_restricted, 1);
        assert_eq!(kernel.rule_count, 0);
    }

    #[test]
    fn net_policy_network_without_egress_is_unrestricted() {
        let kernel = net_policy(&policy("open", "enforce", "  network: {}\n"));
        assert_eq!(kernel.egress_restricted, 0);
    }

    #[test]
    fn net_policy_fills_all_64_rules() {
        let peers: Vec<String> = (0..8).map(|i| format!("{{address: 10.0.0.{i}}}")).collect();
        let ports: Vec<String> = (1..=8).map(|port| format!("{{port: {port}}}")).collect();
        let rules = format!(
            "      - to: [{}]\n        ports: [{}]\n",
            peers.join(", "),
            ports.join(", ")
        );
        let kernel = net_policy(&policy("full", "enforce", &egress(&rules)));
        assert_eq!(kernel.rule_count as usize, MAX_NET_RULES);
        assert_eq!(kernel.rules[63].addr, kernel_addr(ip("10.0.0.7")));
        assert_eq!(kernel.rules[63].port_min, 8);
    }

    fn verdict_of(policies: &[&Policy], addr: &str, port: u16, protocol: Protocol) -> Verdict {
        evaluate_egress(policies, ip(addr), port, protocol).verdict
    }

    #[test]
    fn egress_cidr_edges() {
        let db = policy(
            "db",
            "enforce",
            &egress("      - to: [{cidr: 10.96.0.0/12}]\n"),
        );
        let tcp = Protocol::Tcp;
        assert_eq!(verdict_of(&[&db], "10.96.0.0", 80, tcp), Verdict::Allow);
        assert_eq!(
            verdict_of(&[&db], "10.111.255.255", 80, tcp),
            Verdict::Allow
        );
        assert_eq!(verdict_of(&[&db], "10.95.255.255", 80, tcp), Verdict::Deny);
        assert_eq!(verdict_of(&[&db], "10.112.0.0", 80, tcp), Verdict::Deny);
    }

    #[test]
    fn egress_single_address() {
        let db = policy(
            "db",
            "enforce",
            &egress("      - to: [{address: 10.1.2.3}]\n"),
        );
        assert_eq!(
            verdict_of(&[&db], "10.1.2.3", 1, Protocol::Udp),
            Verdict::Allow
        );
        assert_eq!(
            verdict_of(&[&db], "10.1.2.2", 1, Protocol::Udp),
            Verdict::Deny
        );
        assert_eq!(
            verdict_of(&[&db], "10.1.2.4", 1, Protocol::Udp),
            Verdict::Deny
        );
    }

    #[test]
    fn egress_port_range_edges() {
        let db = policy(
            "db",
            "enforce",
            &egress(
                "      - to: [{cidr: 0.0.0.0/0}]\n        ports: [{port: 5432, endPort: 5440}]\n",
            ),
        );
        let tcp = Protocol::Tcp;
        assert_eq!(verdict_of(&[&db], "10.0.0.1", 5431, tcp), Verdict::Deny);
        assert_eq!(verdict_of(&[&db], "10.0.0.1", 5432, tcp), Verdict::Allow);
        assert_eq!(verdict_of(&[&db], "10.0.0.1", 5440, tcp), Verdict::Allow);
        assert_eq!(verdict_of(&[&db], "10.0.0.1", 5441, tcp), Verdict::Deny);
    }

    #[test]
    fn egress_protocols() {
        let rules = "      - to: [{cidr: 0.0.0.0/0}]\n        ports: [{port: 53, protocol: UDP}, {port: 443, protocol: TCP}, {port: 8080}]\n";
        let db = policy("db", "enforce", &egress(rules));
        let decide = |port, protocol| verdict_of(&[&db], "10.0.0.1", port, protocol);
        assert_eq!(decide(53, Protocol::Udp), Verdict::Allow);
        assert_eq!(decide(53, Protocol::Tcp), Verdict::Deny);
        assert_eq!(decide(443, Protocol::Tcp), Verdict::Allow);
        assert_eq!(decide(443, Protocol::Udp), Verdict::Deny);
        assert_eq!(decide(8080, Protocol::Tcp), Verdict::Allow);
        assert_eq!(decide(8080, Protocol::Udp), Verdict::Allow);
        assert_eq!(PROTOCOL_UDP, Protocol::Udp.number());
    }

    #[test]
    fn egress_rule_without_ports_allows_every_port() {
        let db = policy(
            "db",
            "enforce",
            &egress("      - to: [{address: 10.1.2.3}]\n"),
        );
        for port in [0, 1, 80, u16::MAX] {
            assert_eq!(
                verdict_of(&[&db], "10.1.2.3", port, Protocol::Tcp),
                Verdict::Allow,
                "{port}"
            );
        }
    }

    #[test]
    fn egress_mapped_ipv6_peer_matches_ipv4_rule() {
        let db = policy(
            "db",
            "enforce",
            &egress("      - to: [{cidr: 10.0.0.0/8}]\n"),
        );
        assert_eq!(
            verdict_of(&[&db], "::ffff:10.9.8.7", 80, Protocol::Tcp),
            Verdict::Allow
        );
        assert_eq!(
            verdict_of(&[&db], "::ffff:11.0.0.1", 80, Protocol::Tcp),
            Verdict::Deny
        );
        assert_eq!(
            verdict_of(&[&db], "::a09:807", 80, Protocol::Tcp),
            Verdict::Deny
        );
    }

    #[test]
    fn egress_mapped_ipv6_rule_matches_ipv4_peer() {
        let db = policy(
            "db",
            "enforce",
            &egress("      - to: [{address: '::ffff:10.1.2.3'}]\n"),
        );
        assert_eq!(
            verdict_of(&[&db], "10.1.2.3", 80, Protocol::Tcp),
            Verdict::Allow
        );
    }

    #[test]
    fn egress_ipv6_rules() {
        let db = policy(
            "db",
            "enforce",
            &egress("      - to: [{cidr: 'fd00:10::/32'}]\n"),
        );
        assert_eq!(
            verdict_of(&[&db], "fd00:10::1", 80, Protocol::Tcp),
            Verdict::Allow
        );
        assert_eq!(
            verdict_of(&[&db], "fd00:10:ffff::1", 80, Protocol::Tcp),
            Verdict::Allow
        );
        assert_eq!(
            verdict_of(&[&db], "fd00:11::1", 80, Protocol::Tcp),
            Verdict::Deny
        );
        assert_eq!(
            verdict_of(&[&db], "10.0.0.1", 80, Protocol::Tcp),
            Verdict::Deny
        );
    }

    #[test]
    fn egress_ipv6_default_route_leaves_ipv4_out() {
        // `::/0` covers every IPv6 address but no IPv4 peer, although the
        // kernel compares IPv4 peers as IPv4-mapped IPv6 addresses.
        let any6 = policy("any6", "enforce", &egress("      - to: [{cidr: '::/0'}]\n"));
        assert_eq!(
            verdict_of(&[&any6], "10.0.0.1", 80, Protocol::Tcp),
            Verdict::Deny
        );
        assert_eq!(
            verdict_of(&[&any6], "::ffff:10.0.0.1", 80, Protocol::Tcp),
            Verdict::Deny
        );
        assert_eq!(
            verdict_of(&[&any6], "2001:db8::1", 80, Protocol::Tcp),
            Verdict::Allow
        );
        let any4 = policy(
            "any4",
            "enforce",
            &egress("      - to: [{cidr: 0.0.0.0/0}]\n"),
        );
        assert_eq!(
            verdict_of(&[&any4], "2001:db8::1", 80, Protocol::Tcp),
            Verdict::Deny
        );
    }

    #[test]
    fn egress_reports_matching_rule_index() {
        let rules = "      - to: [{address: 10.0.0.1}]\n      - to: [{address: 10.0.0.2}]\n";
        let db = policy("db", "enforce", &egress(rules));
        let decision = evaluate_egress(&[&db], ip("10.0.0.2"), 80, Protocol::Tcp);
        assert_eq!(
            decision,
            Decision {
                verdict: Verdict::Allow,
                policy: Some("db"),
                rule: Some(1),
            }
        );
    }

    #[test]
    fn egress_stricter_policy_wins() {
        let wide = policy(
            "wide",
            "enforce",
            &egress("      - to: [{cidr: 10.0.0.0/8}]\n"),
        );
        let narrow = policy(
            "narrow",
            "enforce",
            &egress("      - to: [{cidr: 10.1.0.0/16}]\n"),
        );
        for order in [[&wide, &narrow], [&narrow, &wide]] {
            let inside = evaluate_egress(&order, ip("10.1.2.3"), 80, Protocol::Tcp);
            assert_eq!(inside.verdict, Verdict::Allow);
            let outside = evaluate_egress(&order, ip("10.2.0.1"), 80, Protocol::Tcp);
            assert_eq!(
                outside,
                Decision {
                    verdict: Verdict::Deny,
                    policy: Some("narrow"),
                    rule: None,
                }
            );
        }
    }

    #[test]
    fn egress_enforce_refusal_beats_audit() {
        let audit = policy(
            "watch",
            "audit",
            &egress("      - to: [{cidr: 10.1.0.0/16}]\n"),
        );
        let enforce = policy(
            "guard",
            "enforce",
            &egress("      - to: [{cidr: 10.0.0.0/8}]\n"),
        );
        let both = [&audit, &enforce];
        let only_audit_refuses = evaluate_egress(&both, ip("10.2.0.1"), 80, Protocol::Tcp);
        assert_eq!(
            only_audit_refuses,
            Decision {
                verdict: Verdict::Audit,
                policy: Some("watch"),
                rule: None,
            }
        );
        let both_refuse = evaluate_egress(&both, ip("192.168.0.1"), 80, Protocol::Tcp);
        assert_eq!(
            both_refuse,
            Decision {
                verdict: Verdict::Deny,
                policy: Some("guard"),
                rule: None,
            }
        );
        let both_allow = evaluate_egress(&both, ip("10.1.0.1"), 80, Protocol::Tcp);
        assert_eq!(both_allow.verdict, Verdict::Allow);
        assert_eq!(both_allow.policy, Some("watch"));
    }

    #[test]
    fn egress_policy_without_network_does_not_restrict() {
        let open = policy("open", "enforce", "");
        let closed = policy(
            "closed",
            "audit",
            &egress("      - to: [{address: 10.0.0.1}]\n"),
        );
        assert_eq!(
            evaluate_egress(&[&open], ip("192.0.2.1"), 443, Protocol::Tcp),
            Decision {
                verdict: Verdict::Allow,
                policy: None,
                rule: None,
            }
        );
        assert_eq!(
            verdict_of(&[&open, &closed], "192.0.2.1", 443, Protocol::Tcp),
            Verdict::Audit
        );
        assert_eq!(
            verdict_of(&[], "192.0.2.1", 443, Protocol::Tcp),
            Verdict::Allow
        );
    }

    #[test]
    fn egress_empty_list_denies_everything() {
        let closed = policy("closed", "enforce", "  network:\n    egress: []\n");
        for addr in ["10.0.0.1", "127.0.0.1", "::1", "2001:db8::1"] {
            assert_eq!(
                verdict_of(&[&closed], addr, 53, Protocol::Udp),
                Verdict::Deny,
                "{addr}"
            );
        }
    }
}
