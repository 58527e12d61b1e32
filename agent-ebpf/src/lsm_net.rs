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
};

const AF_UNSPEC: u16 = 0;
const SOCK_STREAM: u32 = 1;
/// The peer of the call being judged.
#[map]
static PEER_SCRATCH: PerCpuArray<Peer> = PerCpuArray::with_max_entries(1, 0);

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
    // Most messages name no destination: leave them before any lookup.
    let Some(address) = read_ptr(msg, offsets.msghdr_name) else {
        return ALLOW;
    };
    let address_len: i32 = read(msg, offsets.msghdr_namelen).unwrap_or(0);
    let sock_type: u16 = read(sock, offsets.socket_type).unwrap_or(0);
    if sock_type as u32 == SOCK_STREAM {
        let flags: u32 = read(msg, offsets.msghdr_flags).unwrap_or(0);
        if flags & MSG_FASTOPEN == 0 {
            return ALLOW;
        }
    }
    judge(&offsets, sock, address, address_len, EventKind::Sendmsg)
}

#[inline(always)]
fn offsets() -> Option<LsmNetOffsets> {
    // SAFETY: a volatile read of a global the loader set before load.
    let offsets = unsafe { core::ptr::read_volatile(&LSM_NET_OFFSETS) };
    (offsets.valid != 0).then_some(offsets)
}

/// Judges a call of an IPv4 or IPv6 socket toward `address`. Anything
/// else passes, and so does an address too short for its family, which
/// the kernel refuses with EINVAL after this hook.
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
    // SAFETY: a checked kernel read. The hooks get a kernel copy of the
    // caller's address, in a buffer as large as any address.
    let Ok(given) = (unsafe { bpf_probe_read_kernel(address.cast::<SockaddrIn6>()) }) else {
        return ALLOW;
    };
    let Some(scratch) = PEER_SCRATCH.get_ptr_mut(0) else {
        return ALLOW;
    };
    // SAFETY: the per-CPU entry is this program run's alone.
    let scratch = unsafe { &mut *scratch };
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
        return ALLOW;
    }
    let sock_type: u16 = read(sock, offsets.socket_type).unwrap_or(0);
    let protocol: u16 = read(sk, offsets.sock_protocol).unwrap_or(0);
    scratch.port = u16::from_be(given.port);
    scratch.protocol = rule_protocol(u32::from(protocol));
    scratch.sock_type = u32::from(sock_type);
    // The peer is read back through a new lookup, so that the IPv4 and
    // IPv6 branches end in the same verifier state and the verifier walks
    // the rule matching once, not once per branch.
    let Some(peer) = PEER_SCRATCH.get(0) else {
        return ALLOW;
    };
    let Some(decision) = net::decide(policed.policies, peer) else {
        return ALLOW;
    };
    net::count_and_report(&policed, peer, kind, &decision);
    match decision.verdict {
        Verdict::Deny => DENY,
        Verdict::Allow | Verdict::Audit => ALLOW,
    }
}

/// Returns the protocol the rules name for a socket: an MPTCP socket
/// connects as TCP, which is what the cgroup programs see for it too. The
/// kernel stores the resolved protocol, never 0, for TCP and UDP sockets.
#[inline(always)]
fn rule_protocol(protocol: u32) -> u32 {
    if protocol == IPPROTO_MPTCP { PROTOCOL_TCP } else { protocol }
}
