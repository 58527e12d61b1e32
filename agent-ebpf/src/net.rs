//! Allowed peers: cgroup socket programs on connect and on sendmsg with a
//! destination, for IPv4 and IPv6.
//!
//! Return values of `cgroup/connect*` and `cgroup/sendmsg*` programs: 1 lets
//! the call go on, 0 makes it fail with EPERM at once.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{cgroup_sock_addr, map},
    maps::Array,
    programs::SockAddrContext,
};
use parapet_common::{
    CgroupPolicies, CounterKey, EventHeader, EventKind, MAX_POLICIES_PER_CGROUP,
    MAX_POLICY_SLOTS, Mode, NO_RULE, Verdict,
    net::{FAMILY_INET, FAMILY_INET6, MAX_NET_RULES, NetEvent, NetPolicy},
};

use crate::{counters::count_decision, events, exec, policed};

const ALLOW: i32 = 1;
const DENY_EPERM: i32 = 0;

/// Network part of each policy, indexed by policy slot.
#[map]
static NET_POLICIES: Array<NetPolicy> = Array::with_max_entries(MAX_POLICY_SLOTS, 0);

/// `::ffff:0:0/96` prefix word: the third word of an IPv4-mapped address.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

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
struct Peer {
    addr: [u32; 4],
    port: u16,
    family: u16,
    protocol: u32,
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
    };
    check(&policed, &peer, kind)
}

/// One policy's say about a peer.
struct Decision {
    verdict: Verdict,
    policy_slot: u32,
    rule: u32,
}

#[inline(always)]
fn check(policed: &policed::Policed, peer: &Peer, kind: EventKind) -> i32 {
    let Some(decision) = decide(policed.policies, peer) else {
        // None of the cgroup's policies restricts egress.
        return ALLOW;
    };
    count_decision(&CounterKey {
        cgroup_id: policed.cgroup_id,
        policy_slot: decision.policy_slot,
        rule: decision.rule,
        kind: kind as u32,
        verdict: decision.verdict as u32,
    });
    report(policed, peer, kind, &decision);
    match decision.verdict {
        Verdict::Deny => DENY_EPERM,
        Verdict::Allow | Verdict::Audit => ALLOW,
    }
}

/// Applies every policy of the cgroup: a refusal by an enforce-mode policy
/// denies, a refusal by audit-mode policies only is an audit, and otherwise
/// the call is allowed and charged to the first policy that restricts
/// egress. Returns `None` when no policy restricts egress.
#[inline(always)]
fn decide(policies: &CgroupPolicies, peer: &Peer) -> Option<Decision> {
    let mut allowed: Option<Decision> = None;
    let mut audited: Option<Decision> = None;
    let mut index = 0;
    while index < MAX_POLICIES_PER_CGROUP {
        if index as u32 >= policies.count {
            break;
        }
        let slot = policies.slots[index];
        index += 1;
        let Some(policy) = NET_POLICIES.get(slot) else {
            continue;
        };
        if policy.egress_restricted == 0 {
            continue;
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
    }
    audited.or(allowed)
}

/// Returns the `rule` field of the first rule that allows `peer`, or
/// `NO_RULE`.
#[inline(always)]
fn matching_rule(policy: &NetPolicy, peer: &Peer) -> u32 {
    let mut index = 0;
    while index < MAX_NET_RULES {
        if index as u32 >= policy.rule_count {
            break;
        }
        let rule = &policy.rules[index];
        if rule.matches(&peer.addr, peer.port, peer.protocol) {
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
