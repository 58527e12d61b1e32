//! Network policy as the kernel programs read it, and the network event
//! record they send.
//!
//! Addresses are always kept as IPv6: an IPv4 address `a.b.c.d` is stored
//! as its IPv4-mapped form `::ffff:a.b.c.d`, and an IPv4 prefix of length
//! `n` as a mapped prefix of length `96 + n`. The connect4 and sendmsg4
//! programs map the peer the same way, so one rule matches a peer whether
//! the process used an IPv4 socket or an IPv4-mapped address on an IPv6
//! socket.

use crate::{EventHeader, ExecPath};

/// Rules one policy can hold after peers and ports are multiplied out.
pub const MAX_NET_RULES: usize = 64;

/// `protocol` value of a rule that matches TCP and UDP alike.
pub const PROTOCOL_ANY: u32 = 0;
pub const PROTOCOL_TCP: u32 = 6;
pub const PROTOCOL_UDP: u32 = 17;

/// Third word of an IPv4-mapped address (`::ffff:0:0/96`) in the layout of
/// `NetRule::addr`.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

pub const FAMILY_INET: u16 = 2;
pub const FAMILY_INET6: u16 = 10;

/// `NetRule::flags` bit: the rule names IPv6 addresses only, so it never
/// matches an IPv4 peer, even where its prefix covers `::ffff:0:0/96`
/// (`::/0`, for one). IPv4 peers need IPv4 rules.
pub const RULE_IPV6_ONLY: u32 = 1;

/// One allowed peer: an address range, a port range and a protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    /// Network address, four 32-bit words in network byte order, already
    /// masked.
    pub addr: [u32; 4],
    /// Prefix mask in the same layout as `addr`.
    pub mask: [u32; 4],
    /// Lowest allowed port, host byte order.
    pub port_min: u16,
    /// Highest allowed port, host byte order; `0..=65535` allows every port.
    pub port_max: u16,
    /// `PROTOCOL_TCP`, `PROTOCOL_UDP` or `PROTOCOL_ANY`.
    pub protocol: u32,
    /// Index of the egress rule in the policy this entry came from, reported
    /// in events and counters.
    pub rule: u32,
    /// `RULE_IPV6_ONLY` or 0.
    pub flags: u32,
}

impl NetRule {
    /// Returns whether this rule allows a peer, with `addr` in the layout of
    /// `NetRule::addr` and `port` in host byte order.
    #[inline(always)]
    pub fn matches(&self, addr: &[u32; 4], port: u16, protocol: u32) -> bool {
        self.matches_peer(addr, port, protocol, is_ipv4_mapped(addr))
    }

    /// `matches`, with whether the peer is an IPv4 address worked out once
    /// by the caller. The tests are combined without short-circuiting, so
    /// that the kernel programs have few branches for the verifier to
    /// explore (it rejects a program after one million instructions).
    #[inline(always)]
    pub fn matches_peer(&self, addr: &[u32; 4], port: u16, protocol: u32, ipv4_peer: bool) -> bool {
        let family = (self.flags & RULE_IPV6_ONLY == 0) | !ipv4_peer;
        let protocol = (self.protocol == PROTOCOL_ANY) | (self.protocol == protocol);
        let port = (port >= self.port_min) & (port <= self.port_max);
        let differences = ((addr[0] & self.mask[0]) ^ self.addr[0])
            | ((addr[1] & self.mask[1]) ^ self.addr[1])
            | ((addr[2] & self.mask[2]) ^ self.addr[2])
            | ((addr[3] & self.mask[3]) ^ self.addr[3]);
        family & protocol & port & (differences == 0)
    }
}

/// Whether an address in the layout of `NetRule::addr` is IPv4-mapped.
#[inline(always)]
pub fn is_ipv4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_WORD
}

/// Network part of one policy: value of `NET_POLICIES`, an array indexed by
/// policy slot.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetPolicy {
    /// A `Mode`.
    pub mode: u32,
    /// 1 when the policy lists egress peers, so that every other peer is
    /// refused; 0 when it leaves egress alone.
    pub egress_restricted: u32,
    /// Number of valid entries in `rules`.
    pub rule_count: u32,
    /// Reserved, zero.
    pub reserved: u32,
    pub rules: [NetRule; MAX_NET_RULES],
}

impl Default for NetPolicy {
    fn default() -> Self {
        Self {
            mode: 0,
            egress_restricted: 0,
            rule_count: 0,
            reserved: 0,
            rules: [NetRule::default(); MAX_NET_RULES],
        }
    }
}

/// Event record of a connect or sendmsg decision.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetEvent {
    pub header: EventHeader,
    /// Peer address in the layout of `NetRule::addr`.
    pub addr: [u32; 4],
    /// Peer port, host byte order.
    pub port: u16,
    /// The socket's address family: `FAMILY_INET`, `FAMILY_INET6`, or
    /// another for a refused socket creation.
    pub family: u16,
    /// IP protocol number of the socket: `PROTOCOL_TCP`, `PROTOCOL_UDP`, or
    /// another for a refused socket creation.
    pub protocol: u32,
    /// Socket type (`SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_RAW`...).
    pub sock_type: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The calling process's program, when the kernel saw it start.
    pub binary: ExecPath,
}
