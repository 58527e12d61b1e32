//! Socket creation: refuses, for workloads whose egress is restricted, the
//! sockets that the connect and sendmsg programs cannot check. Raw and
//! packet sockets build their own headers, and protocols such as UDP-Lite
//! connect without passing the connect hook.
//!
//! Return values of `cgroup/sock_create` programs: 1 lets `socket(2)` go
//! on, 0 makes it fail with EPERM. That hook runs for IPv4 and IPv6
//! sockets only, so packet sockets are caught on the `socket(2)` syscall
//! tracepoint instead, where the only way to refuse is to kill the caller.

use aya_ebpf::{
    helpers::bpf_send_signal,
    macros::{cgroup_sock, tracepoint},
    programs::{SockContext, TracePointContext},
};
use parapet_common::{
    CgroupPolicies, EventKind, Mode, NO_RULE, Verdict,
    net::{PROTOCOL_TCP, PROTOCOL_UDP},
};

use crate::{
    net::{self, Decision, NET_POLICIES, Peer},
    policed,
};

const ALLOW: i32 = 1;
const DENY_EPERM: i32 = 0;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_PACKET: u32 = 17;
const AF_XDP: u32 = 44;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const SOCK_PACKET: u32 = 10;
pub(crate) const IPPROTO_MPTCP: u32 = 262;

#[cgroup_sock(sock_create)]
pub fn parapet_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands every cgroup/sock program a valid socket.
    let sock = unsafe { &*ctx.sock };
    if !uncheckable(sock.family, sock.type_, sock.protocol) {
        return ALLOW;
    }
    match judge_creation(sock.family, sock.type_, sock.protocol) {
        Some(Verdict::Deny) => DENY_EPERM,
        _ => ALLOW,
    }
}

/// Offsets of the `family`, `type` and `protocol` arguments in the
/// `syscalls/sys_enter_socket` record, from
/// `/sys/kernel/tracing/events/syscalls/sys_enter_socket/format`: every
/// syscall argument takes 8 bytes after the 8-byte common header and the
/// syscall number.
const SOCKET_FAMILY_OFFSET: usize = 16;
const SOCKET_TYPE_OFFSET: usize = 24;
const SOCKET_PROTOCOL_OFFSET: usize = 32;
/// The socket type argument also carries `SOCK_NONBLOCK` and `SOCK_CLOEXEC`.
const SOCK_TYPE_MASK: u32 = 0xf;
const SIGKILL: u32 = 9;

/// The kernel ignores the return value of tracepoint programs.
const DONE: u32 = 0;

#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn parapet_socket_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: the offsets are those of 8-byte fields inside the record.
    let Ok(family) = (unsafe { ctx.read_at::<u64>(SOCKET_FAMILY_OFFSET) }) else {
        return DONE;
    };
    let family = family as u32;
    let sock_type = unsafe { ctx.read_at::<u64>(SOCKET_TYPE_OFFSET) }.unwrap_or(0) as u32 & SOCK_TYPE_MASK;
    // `socket(AF_INET, SOCK_PACKET, ...)` is the old way to ask for a packet
    // socket, and AF_XDP sockets send frames as directly.
    let packet = family == AF_PACKET || family == AF_XDP || (family == AF_INET && sock_type == SOCK_PACKET);
    if !packet {
        return DONE;
    }
    let protocol = unsafe { ctx.read_at::<u64>(SOCKET_PROTOCOL_OFFSET) }.unwrap_or(0) as u32;
    if judge_creation(family, sock_type, protocol) == Some(Verdict::Deny) {
        // The signal is delivered before the syscall returns to user space,
        // so the process never uses the socket.
        // SAFETY: the helper only signals the current task.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    DONE
}

/// Returns whether a socket of this kind could reach a peer without passing the
/// connect and sendmsg programs.
#[inline(always)]
fn uncheckable(family: u32, sock_type: u32, protocol: u32) -> bool {
    match family {
        AF_PACKET => true,
        AF_INET | AF_INET6 => {
            sock_type == SOCK_RAW
                || !(protocol == PROTOCOL_TCP || protocol == PROTOCOL_UDP || protocol == IPPROTO_MPTCP)
        }
        _ => false,
    }
}

/// Decides on the creation of a socket that the connect and sendmsg
/// checks cannot see, counts and reports the decision, and returns its
/// verdict, or `None` when the caller is not policed or no policy of its
/// cgroup restricts egress.
#[inline(always)]
pub(crate) fn judge_creation(family: u32, sock_type: u32, protocol: u32) -> Option<Verdict> {
    let policed = policed::current()?;
    let decision = decide(policed.policies)?;
    let peer = Peer {
        addr: [0; 4],
        port: 0,
        family: family as u16,
        protocol,
        sock_type,
    };
    net::count_and_report(&policed, &peer, EventKind::Socket, &decision);
    Some(decision.verdict)
}

/// Returns whether a `socket(2)` request could reach a peer without passing
/// the connect and sendmsg checks: a packet or XDP socket, or an IP socket
/// other than TCP, MPTCP and UDP. `protocol` is as the caller gave it, 0
/// for the default of the type.
#[inline(always)]
pub(crate) fn uncheckable_request(family: u32, sock_type: u32, protocol: u32) -> bool {
    match family {
        AF_PACKET | AF_XDP => true,
        AF_INET | AF_INET6 => match sock_type {
            SOCK_STREAM => !(protocol == 0 || protocol == PROTOCOL_TCP || protocol == IPPROTO_MPTCP),
            SOCK_DGRAM => !(protocol == 0 || protocol == PROTOCOL_UDP),
            _ => true,
        },
        _ => false,
    }
}

/// Decides on such a socket: every policy that restricts egress refuses it, an
/// enforce-mode one denies it, audit-mode ones only report it. Returns
/// `None` when no policy of the cgroup restricts egress.
#[inline(always)]
fn decide(policies: &CgroupPolicies) -> Option<Decision> {
    let mut audited: Option<Decision> = None;
    let denied = policed::find_slot(policies, |slot| {
        let policy = NET_POLICIES.get(slot)?;
        if policy.egress_restricted == 0 {
            return None;
        }
        if policy.mode == Mode::Enforce as u32 {
            return Some(Decision {
                verdict: Verdict::Deny,
                policy_slot: slot,
                rule: NO_RULE,
            });
        }
        if audited.is_none() {
            audited = Some(Decision {
                verdict: Verdict::Audit,
                policy_slot: slot,
                rule: NO_RULE,
            });
        }
        None
    });
    denied.or(audited)
}
