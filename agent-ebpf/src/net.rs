//! Allowed peers: cgroup socket programs on connect and on sendmsg with a
//! destination, for IPv4 and IPv6.
//!
//! Return values of `cgroup/connect*` and `cgroup/sendmsg*` programs: 1 lets
//! the call go on, 0 makes it fail with EPERM at once.
//!
//! NOTE: once these programs are attached, every unconnected UDP send on
//! the node takes the socket lock and enters the kernel's cgroup hook,
//! also from cgroups outside the one they are attached to. On Linux 6.18 a
//! loopback send took 674 ns without the agent, 739 ns from outside the
//! agent's cgroup root and 777 ns from an unpoliced cgroup below it. So
//! attaching to policed pods alone would save unpoliced pods only the
//! program's part. The README's Known limits give the whole measurement.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{cgroup_sock_addr, map},
    maps::Array,
    programs::SockAddrContext,
};
use parapet_common::{
    CgroupPolicies, CounterKey, EventHeader, EventKind,
    MAX_POLICY_SLOTS, Mode, NO_RULE, Verdict,
    net::{
        FAMILY_INET, FAMILY_INET6, MAX_NET_RULES, NetEvent, NetPolicy, V4_MAPPED_WORD, is_ipv4_mapped,
    },
};

use crate::{counters::count_decision, events, exec, policed};

const ALLOW: i32 = 1;
const DENY_EPERM: i32 = 0;

/// Network part of each policy, indexed by policy slot.
#[map]
pub(crate) static NET_POLICIES: Array<NetPolicy> = Array::with_max_entries(MAX_POLICY_SLOTS, 0);

#[cgroup_sock_addr(connect4)]
pub fn parapet_connect4(ctx: SockAddrContext) -> i32 {
    check_v4(&ctx, EventKind::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn parapet_connect6(ctx: SockAddrContext) -> i32 {
    check_v6(&ctx, EventKind::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn parapet_sendmsg4(ctx: SockAddrContext) -> i32 {
    check_v4(&ctx, EventKind::Sendmsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn parapet_sendmsg6(ctx: SockAddrContext) -> i32 {
    check_v6(&ctx, EventKind::Sendmsg)
}

/// The peer of one call, in the layout of `NetRule::addr`.
pub(crate) struct Peer {
    pub(crate) addr: [u32; 4],
    pub(crate) port: u16,
    pub(crate) family: u16,
    pub(crate) protocol: u32,
    pub(crate) sock_type: u32,
}

#[inline(always)]
fn check_v4(ctx: &SockAddrContext, kind: EventKind) -> i32 {
    let Some(policed) = policed::current() else {
        return ALLOW;
    };
    // SAFETY: the kernel hands every cgroup/sock_addr program a valid context.
    let sock_addr = unsafe { &*ctx.sock_addr };
    let peer = Peer {
        addr: [0, 0, V4_MAPPED_WORD, sock_addr.user_ip4],
        port: u16::from_be(sock_addr.user_port as u16),
        family: FAMILY_INET,
        protocol: sock_addr.protocol,
        sock_type: sock_addr.type_,
    };
    check(&policed, &peer, kind)
}

#[inline(always)]
fn check_v6(ctx: &SockAddrContext, kind: EventKind) -> i32 {
    let Some(policed) = policed::current() else {
        return ALLOW;
    };
    // SAFETY: as in `check_v4`.
    let sock_addr = unsafe { &*ctx.sock_addr };
    let peer = Peer {
        // IPv4-mapped peers arrive here already in the mapped form the
        // rules use, so they match IPv4 rules without conversion.
        addr: [
            sock_addr.user_ip6[0],
            sock_addr.user_ip6[1],
            sock_addr.user_ip6[2],
            sock_addr.user_ip6[3],
        ],
        port: u16::from_be(sock_addr.user_port as u16),
        family: FAMILY_INET6,
        protocol: sock_addr.protocol,
        sock_type: sock_addr.type_,
    };
    check(&policed, &peer, kind)
}

/// The verdict on one call, charged to one policy slot.
pub(crate) struct Decision {
    pub(crate) verdict: Verdict,
    pub(crate) policy_slot: u32,
    pub(crate) rule: u32,
}

#[inline(always)]
pub(crate) fn check(policed: &policed::Policed, peer: &Peer, kind: EventKind) -> i32 {
    let Some(decision) = decide(policed.policies, peer) else {
        // None of the cgroup's policies restricts egress.
        return ALLOW;
    };
    count_and_report(policed, peer, kind, &decision);
    match decision.verdict {
        Verdict::Deny => DENY_EPERM,
        Verdict::Allow | Verdict::Audit => ALLOW,
    }
}

/// Counts a decision and sends its event record. Every refusal is sent.
/// An allowed call is sent only when its counter on this CPU reaches 1, 2,
/// 4, 8 and so on. Otherwise a workload that connects thousands of times a
/// second would pay a ring buffer record and a wake-up of the agent on
/// every call. The counter still counts every allowed call.
#[inline(always)]
pub(crate) fn count_and_report(
    policed: &policed::Policed,
    peer: &Peer,
    kind: EventKind,
    decision: &Decision,
) {
    let count = count_decision(&CounterKey {
        cgroup_id: policed.policed_cgroup_id,
        policy_slot: decision.policy_slot,
        rule: decision.rule,
        kind: kind as u32,
        verdict: decision.verdict as u32,
    });
    if decision.verdict == Verdict::Allow && !count.is_power_of_two() {
        return;
    }
    report(policed, peer, kind, decision);
}

/// Applies every policy of the cgroup: a refusal by an enforce-mode policy
/// denies, a refusal by audit-mode policies only is an audit, and otherwise
/// the call is allowed and charged to the first policy that restricts
/// egress. Returns `None` when no policy restricts egress.
#[inline(always)]
pub(crate) fn decide(policies: &CgroupPolicies, peer: &Peer) -> Option<Decision> {
    let mut allowed: Option<Decision> = None;
    let mut audited: Option<Decision> = None;
    let denied = policed::find_slot(policies, |slot| {
        let policy = NET_POLICIES.get(slot)?;
        if policy.egress_restricted == 0 {
            return None;
        }
        let rule = matching_rule(policy, peer);
        if rule != NO_RULE {
            if allowed.is_none() {
                allowed = Some(Decision {
                    verdict: Verdict::Allow,
                    policy_slot: slot,
                    rule,
                });
            }
        } else if policy.mode == Mode::Enforce as u32 {
            return Some(Decision {
                verdict: Verdict::Deny,
                policy_slot: slot,
                rule: NO_RULE,
            });
        } else if audited.is_none() {
            audited = Some(Decision {
                verdict: Verdict::Audit,
                policy_slot: slot,
                rule: NO_RULE,
            });
        }
        None
    });
    denied.or(audited).or(allowed)
}

/// Returns the `rule` field of the first rule that allows `peer`, or
/// `NO_RULE`.
#[inline(always)]
fn matching_rule(policy: &NetPolicy, peer: &Peer) -> u32 {
    let ipv4_peer = is_ipv4_mapped(&peer.addr);
    let mut index = 0;
    while index < MAX_NET_RULES {
        if index as u32 >= policy.rule_count {
            break;
        }
        let rule = &policy.rules[index];
        if rule.matches_peer(&peer.addr, peer.port, peer.protocol, ipv4_peer) {
            return rule.rule;
        }
        index += 1;
    }
    NO_RULE
}

#[inline(always)]
fn report(policed: &policed::Policed, peer: &Peer, kind: EventKind, decision: &Decision) {
    let Some(mut entry) = events::reserve::<NetEvent>() else {
        return;
    };
    let record = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    // SAFETY: `record` points at reserved ring buffer memory the size of a
    // `NetEvent`, which is written field by field: the record is too large
    // to build on the 512-byte stack first.
    unsafe {
        (*record).header = EventHeader {
            kind: kind as u32,
            verdict: decision.verdict as u32,
            boot_time_ns: bpf_ktime_get_boot_ns(),
            cgroup_id: policed.cgroup_id,
            policed_cgroup_id: policed.policed_cgroup_id,
            tid: pid_tgid as u32,
            pid,
            policy_slot: decision.policy_slot,
            rule: decision.rule,
            comm: bpf_get_current_comm().unwrap_or_default(),
        };
        (*record).addr = peer.addr;
        (*record).port = peer.port;
        (*record).family = peer.family;
        (*record).protocol = peer.protocol;
        (*record).sock_type = peer.sock_type;
        (*record).reserved = 0;
        match exec::path_of(pid) {
            Some(path) => core::ptr::copy_nonoverlapping(path, &raw mut (*record).binary, 1),
            None => {
                (*record).binary.len = 0;
                (*record).binary.truncated = 0;
            }
        }
    }
    entry.submit(0);
}
