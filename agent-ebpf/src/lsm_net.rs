//! The allowed-peers promise on kernels with BPF LSM: `socket_connect` and
//! `socket_sendmsg` refuse a peer the policy does not allow with EPERM, and
//! `socket_create` refuses, with EPERM as well, the sockets those two hooks
//! cannot check. Where these programs are attached, the agent attaches no
//! cgroup socket program and no socket tracepoint, so no process is killed
//! for opening a packet socket.
//!
//! Peers are judged by the same rules and in the same address layout as
//! the cgroup programs (see `net`). The hooks get the address the caller
//! gave, already copied into kernel memory, before the protocol looks at
//! it: an IPv4 address on an IPv6 socket (a UDP `sendto` may give one) is
//! judged as the IPv4 peer it names.
//!
//! A `sendmsg` with a destination is judged on every socket type but TCP
//! and MPTCP, where the kernel ignores the destination unless
//! `MSG_FASTOPEN` makes the call a connect. `socket_create` receives the
//! protocol as the caller gave it, 0 for the default of the type.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{lsm, map},
    maps::PerCpuArray,
    programs::LsmContext,
};
use parapet_common::{
    EventKind, Verdict,
    lsm::LsmNetOffsets,
    net::{FAMILY_INET, FAMILY_INET6, PROTOCOL_TCP, V4_MAPPED_WORD},
};

use crate::{
    lsm::{ALLOW, DENY, previous_verdict, read, read_ptr},
    net::{self, Peer},
    policed,
    socket::{self, IPPROTO_MPTCP},
};

/// Struct member offsets for this kernel, set by the agent before load.
#[unsafe(no_mangle)]
static LSM_NET_OFFSETS: LsmNetOffsets = LsmNetOffsets {
    valid: 0,
    socket_type: 0,
    socket_sk: 0,
    sock_family: 0,
    sock_protocol: 0,
    msghdr_name: 0,
    msghdr_namelen: 0,
    msghdr_flags: 0,
    sock_daddr: 0,
    sock_dport: 0,
    sock_v6_daddr: 0,
};

const AF_UNSPEC: u16 = 0;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// The peer of the call being judged.
#[map]
static PEER_SCRATCH: PerCpuArray<Peer> = PerCpuArray::with_max_entries(1, 0);

/// 1 when the call being judged is a send to the socket's connected peer.
#[map]
static CONNECTED_SEND: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `MSG_FASTOPEN` in `msghdr.msg_flags`.
const MSG_FASTOPEN: u32 = 0x2000_0000;
/// Sizes of `struct sockaddr_in` and `struct sockaddr_in6`.
const SOCKADDR_IN_LEN: i32 = 16;
const SOCKADDR_IN6_LEN: i32 = 24;

/// `struct sockaddr_in6`, which also covers a `struct sockaddr_in`: the
/// family and port come first in both, and the IPv4 address lies where
/// `flowinfo` is.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo_or_ipv4: u32,
    addr: [u32; 4],
}

#[lsm(hook = "socket_create")]
pub fn parapet_socket_create(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let sock_type: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    if let Some(verdict) = previous_verdict(ctx.arg(4)) {
        return verdict;
    }
    // Sockets the kernel makes for itself belong to no caller.
    if kern != 0 {
        return ALLOW;
    }
    let (family, sock_type, protocol) = (family as u32, sock_type as u32, protocol as u32);
    if !socket::uncheckable_request(family, sock_type, protocol) {
        return ALLOW;
    }
    match socket::judge_creation(family, sock_type, protocol) {
        Some(Verdict::Deny) => DENY,
        _ => ALLOW,
    }
}

#[lsm(hook = "socket_connect")]
pub fn parapet_socket_connect(ctx: LsmContext) -> i32 {
    let sock: *const u8 = ctx.arg(0);
    let address: *const u8 = ctx.arg(1);
    let address_len: i32 = ctx.arg(2);
    if let Some(verdict) = previous_verdict(ctx.arg(3)) {
        return verdict;
    }
    let Some(offsets) = offsets() else {
        return ALLOW;
    };
    // The kernel always passes its copy of the address. Null would mean
    // the connected peer to `judge`.
    if address.is_null() {
        return ALLOW;
    }
    judge(&offsets, sock, address, address_len, EventKind::Connect)
}

#[lsm(hook = "socket_sendmsg")]
pub fn parapet_socket_sendmsg(ctx: LsmContext) -> i32 {
    let sock: *const u8 = ctx.arg(0);
    let msg: *const u8 = ctx.arg(1);
    if let Some(verdict) = previous_verdict(ctx.arg(3)) {
        return verdict;
    }
    let Some(offsets) = offsets() else {
        return ALLOW;
    };
    let sock_type: u16 = read(sock, offsets.socket_type).unwrap_or(0);
    let address = read_ptr(msg, offsets.msghdr_name).unwrap_or(core::ptr::null());
    if address.is_null() {
        // A send on a connected datagram socket goes to the socket's peer,
        // which may have been connected before the policy arrived. Other
        // sockets without a destination (most sends) leave at once.
        if u32::from(sock_type) != SOCK_DGRAM {
            return ALLOW;
        }
    } else if u32::from(sock_type) == SOCK_STREAM {
        let flags: u32 = read(msg, offsets.msghdr_flags).unwrap_or(0);
        if flags & MSG_FASTOPEN == 0 {
            return ALLOW;
        }
    }
    let address_len: i32 = read(msg, offsets.msghdr_namelen).unwrap_or(0);
    judge(&offsets, sock, address, address_len, EventKind::Sendmsg)
}

#[inline(always)]
fn offsets() -> Option<LsmNetOffsets> {
    // SAFETY: a volatile read of a global the loader set before load.
    let offsets = unsafe { core::ptr::read_volatile(&LSM_NET_OFFSETS) };
    (offsets.valid != 0).then_some(offsets)
}

/// Judges a call of an IPv4 or IPv6 socket toward `address`, or toward
/// the socket's connected peer when `address` is null. Anything else
/// passes, and so does an address too short for its family, which the
/// kernel refuses with EINVAL after this hook. A send to the connected peer
/// that the policy allows is neither counted nor reported, since the
/// connect was.
#[inline(always)]
fn judge(offsets: &LsmNetOffsets, sock: *const u8, address: *const u8, address_len: i32, kind: EventKind) -> i32 {
    let Some(sk) = read_ptr(sock, offsets.socket_sk) else {
        return ALLOW;
    };
    let socket_family: u16 = read(sk, offsets.sock_family).unwrap_or(0);
    if socket_family != FAMILY_INET && socket_family != FAMILY_INET6 {
        return ALLOW;
    }
    let Some(policed) = policed::current() else {
        return ALLOW;
    };

    let Some(scratch) = PEER_SCRATCH.get_ptr_mut(0) else {
        return ALLOW;
    };
    // SAFETY: the per-CPU entry is this program run's alone.
    let scratch = unsafe { &mut *scratch };
    let connected = address.is_null();
    let found = if connected {
        connected_peer(offsets, sk, socket_family, scratch)
    } else {
        given_peer(address, address_len, kind, socket_family, scratch)
    };
    if !found {
        return ALLOW;
    }

    let sock_type: u16 = read(sock, offsets.socket_type).unwrap_or(0);
    let protocol: u16 = read(sk, offsets.sock_protocol).unwrap_or(0);
    scratch.protocol = rule_protocol(u32::from(protocol));
    scratch.sock_type = u32::from(sock_type);
    if let Some(flag) = CONNECTED_SEND.get_ptr_mut(0) {
        // SAFETY: the per-CPU entry is this program run's alone.
        unsafe { *flag = u32::from(connected) };
    }
    // The peer is read back through a new lookup, so that the IPv4 and
    // IPv6 branches end in the same verifier state and the verifier walks
    // the rule matching once, not once per branch.
    let Some(peer) = PEER_SCRATCH.get(0) else {
        return ALLOW;
    };
    let Some(decision) = net::decide(policed.policies, peer) else {
        return ALLOW;
    };
    // Read back from the map for the same reason as the peer.
    let connected = CONNECTED_SEND.get(0).is_some_and(|flag| *flag != 0);
    if connected && decision.verdict == Verdict::Allow {
        return ALLOW;
    }
    net::count_and_report(&policed, peer, kind, &decision);
    match decision.verdict {
        Verdict::Deny => DENY,
        Verdict::Allow | Verdict::Audit => ALLOW,
    }
}

/// Fills the address, port and family of `scratch` from the address the
/// caller gave. Returns false when it names no IP peer.
#[inline(always)]
fn given_peer(address: *const u8, address_len: i32, kind: EventKind, socket_family: u16, scratch: &mut Peer) -> bool {
    // SAFETY: a checked kernel read. The hooks get a kernel copy of the
    // caller's address, in a buffer as large as any address.
    let Ok(given) = (unsafe { bpf_probe_read_kernel(address.cast::<SockaddrIn6>()) }) else {
        return false;
    };
    // IPv4 UDP sends to an `AF_UNSPEC` destination as to an IPv4 one. A
    // connect to `AF_UNSPEC` dissolves an association and reaches no peer,
    // and so does a send to it on an IPv6 socket.
    let unspec_as_ipv4 = given.family == AF_UNSPEC && kind == EventKind::Sendmsg && socket_family == FAMILY_INET;
    if (given.family == FAMILY_INET || unspec_as_ipv4) && address_len >= SOCKADDR_IN_LEN {
        scratch.addr = [0, 0, V4_MAPPED_WORD, given.flowinfo_or_ipv4];
        scratch.family = FAMILY_INET;
    } else if given.family == FAMILY_INET6 && address_len >= SOCKADDR_IN6_LEN {
        scratch.addr = given.addr;
        scratch.family = FAMILY_INET6;
    } else {
        // Other families name no IP peer.
        return false;
    }
    scratch.port = u16::from_be(given.port);
    true
}

/// Fills the address, port and family of `scratch` from the peer the
/// socket `sk` is connected to. Returns false when it has none (the kernel
/// then fails the send with EDESTADDRREQ).
#[inline(always)]
fn connected_peer(offsets: &LsmNetOffsets, sk: *const u8, socket_family: u16, scratch: &mut Peer) -> bool {
    let port: u16 = read(sk, offsets.sock_dport).unwrap_or(0);
    if port == 0 {
        return false;
    }
    if socket_family == FAMILY_INET {
        let Some(addr) = read::<u32>(sk, offsets.sock_daddr) else {
            return false;
        };
        scratch.addr = [0, 0, V4_MAPPED_WORD, addr];
    } else {
        // An IPv6 socket connected to an IPv4 peer stores it IPv4-mapped.
        let Some(addr) = read::<[u32; 4]>(sk, offsets.sock_v6_daddr) else {
            return false;
        };
        scratch.addr = addr;
    }
    scratch.family = socket_family;
    scratch.port = u16::from_be(port);
    true
}

/// Returns the protocol the rules name for a socket: an MPTCP socket
/// connects as TCP, which is what the cgroup programs see for it too. The
/// kernel stores the resolved protocol, never 0, for TCP and UDP sockets.
#[inline(always)]
fn rule_protocol(protocol: u32) -> u32 {
    if protocol == IPPROTO_MPTCP { PROTOCOL_TCP } else { protocol }
}
