//! Events: decoding the kernel's records and the JSON form that the agent
//! prints, streams to `parapet tail` and counts.

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use parapet_common::{
    EventHeader, EventKind, NO_RULE, Verdict,
    file::FileEvent,
    exec::{EXEC_EVENT_UNRESOLVED, ExecEvent, LIST_ALLOW, LIST_DENY, RULE_IDENTITY, RULE_LIST_SHIFT, RULE_PATH},
    net::{FAMILY_INET, NetEvent, PROTOCOL_TCP, PROTOCOL_UDP},
};
use serde::{Deserialize, Serialize};

/// One decision on a policed process, with who, what, which policy and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 time of the decision, in UTC.
    pub time: String,
    pub node: String,
    pub kind: Kind,
    /// The operation inside the kind: `connect` or `sendmsg` for `network`.
    pub operation: String,
    pub verdict: VerdictName,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub container_id: Option<String>,
    pub cgroup_id: u64,
    /// Process id in the node's pid namespace.
    pub pid: u32,
    /// Thread id in the node's pid namespace.
    pub tid: u32,
    /// The thread's `comm`.
    pub process: String,
    /// The process's program: the path its last `execve` named, as the
    /// kernel recorded it, or else `/proc/PID/exe` read when the agent
    /// received the event. `None` when neither was available.
    pub binary: Option<String>,
    /// True when the kernel cut `binary` short at its length limit.
    pub binary_truncated: bool,
    pub peer: Option<Peer>,
    pub policy: Option<String>,
    /// The rule that allowed the operation, as a path into the policy;
    /// `None` when no rule matched.
    pub rule: Option<String>,
    /// Explanation: the failure for `not-enforced` events, the match for exec
    /// events, and the requested socket kind for refused sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For file events: the path as the process gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For file events: `path` made absolute against the process's working
    /// directory or directory descriptor, where the agent could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_path: Option<String>,
    /// For file events: true when the kernel cut `path` short. The LSM
    /// backend keeps its last components, the syscall tracepoints its first
    /// bytes. A cut path is never reported as `resolved_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_truncated: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Network,
    File,
    Exec,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::File => "file",
            Self::Exec => "exec",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictName {
    Allow,
    Deny,
    Audit,
    /// The agent could not put a selected workload under its policy.
    NotEnforced,
}

impl VerdictName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
            Self::NotEnforced => "not-enforced",
        }
    }

    /// Returns whether the decision is a violation: refused, or refused in audit.
    pub fn is_violation(self) -> bool {
        self != Self::Allow
    }
}

impl From<Verdict> for VerdictName {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Allow => Self::Allow,
            Verdict::Deny => Self::Deny,
            Verdict::Audit => Self::Audit,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub address: IpAddr,
    pub port: u16,
    /// `tcp`, `udp`, or the IP protocol number for anything else.
    pub protocol: String,
}

/// A record as the kernel sent it, before identities are added.
#[derive(Clone, Copy, Debug)]
pub enum Record {
    Net(NetEvent),
    Exec(ExecEvent),
    File(FileEvent),
}

impl Record {
    pub fn header(&self) -> &EventHeader {
        match self {
            Self::Net(event) => &event.header,
            Self::Exec(event) => &event.header,
            Self::File(event) => &event.header,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record of {len} bytes is shorter than its {expected}-byte layout")]
    Short { len: usize, expected: usize },
    #[error("event record has unknown kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("event record has unknown verdict {verdict}")]
    UnknownVerdict { verdict: u32 },
}

/// Decodes one ring buffer record. Any byte string is accepted as input:
/// records shorter than their layout or with unknown kinds are errors.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let header: EventHeader = read_prefix(bytes)?;
    Verdict::from_u32(header.verdict).ok_or(DecodeError::UnknownVerdict {
        verdict: header.verdict,
    })?;
    match EventKind::from_u32(header.kind) {
        Some(EventKind::Connect | EventKind::Sendmsg | EventKind::Socket) => {
            Ok(Record::Net(read_prefix(bytes)?))
        }
        Some(EventKind::Exec) => Ok(Record::Exec(read_prefix(bytes)?)),
        Some(EventKind::File) => Ok(Record::File(read_prefix(bytes)?)),
        None => Err(DecodeError::UnknownKind { kind: header.kind }),
    }
}

/// Reads a plain `#[repr(C)]` record from the start of `bytes`.
fn read_prefix<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if bytes.len() < expected {
        return Err(DecodeError::Short {
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length is checked above, `read_unaligned` has no
    // alignment requirement, and the record types are integers only, so any
    // bytes make a valid value.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Returns the `comm` of a record as text.
pub fn comm(header: &EventHeader) -> Cow<'_, str> {
    let end = header.comm.iter().position(|&b| b == 0).unwrap_or(header.comm.len());
    String::from_utf8_lossy(&header.comm[..end])
}

/// Returns the name of an IP protocol that events name rather than number.
pub fn protocol_name(protocol: u32) -> Option<&'static str> {
    match protocol {
        PROTOCOL_TCP => Some("tcp"),
        PROTOCOL_UDP => Some("udp"),
        _ => None,
    }
}

/// Returns the peer address of a network record. An IPv4 socket's peer is
/// shown as IPv4, an IPv6 socket's as IPv6, IPv4-mapped addresses included.
pub fn peer_address(event: &NetEvent) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(event.addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    if event.family == FAMILY_INET {
        IpAddr::V4(Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(octets))
    }
}

/// Returns the program path the kernel put in a record, with whether it was cut.
pub fn exec_path(path: &parapet_common::ExecPath) -> Option<(Cow<'_, str>, bool)> {
    let len = (path.len as usize).min(path.bytes.len());
    (len > 0).then(|| (String::from_utf8_lossy(&path.bytes[..len]), path.truncated != 0))
}

/// Returns the list entry named by an exec record's rule, as a path into
/// the policy.
pub fn exec_rule(header: &EventHeader) -> Option<String> {
    let rule = rule_index(header)?;
    let index = rule & ((1 << RULE_LIST_SHIFT) - 1);
    match rule >> RULE_LIST_SHIFT {
        LIST_ALLOW => Some(format!("spec.exec.allow[{index}]")),
        LIST_DENY => Some(format!("spec.exec.deny[{index}]")),
        _ => None,
    }
}

/// Describes how an exec record's program was matched.
pub fn exec_detail(event: &ExecEvent) -> String {
    let file = format!(
        "file device {}:{} inode {}",
        event.dev >> 20,
        event.dev & 0xfffff,
        event.ino
    );
    let matched = match event.matched_by {
        RULE_IDENTITY => "matched by file identity".to_owned(),
        RULE_PATH => "matched by path".to_owned(),
        _ => "on no list".to_owned(),
    };
    let unresolved = if event.flags & EXEC_EVENT_UNRESOLVED != 0 {
        "; not blocked because the agent had not yet looked up this container's allowed files"
    } else {
        ""
    };
    format!("{file}, {matched}{unresolved}")
}

/// Describes the socket that a refused socket creation requested.
pub fn socket_detail(event: &NetEvent) -> String {
    let kind = match (event.family, event.sock_type) {
        (17, _) | (2, 10) => "packet socket",
        (44, _) => "AF_XDP socket",
        (_, 3) => "raw socket",
        _ => "socket of a protocol the network policy cannot check",
    };
    format!(
        "{kind} (family {}, type {}, protocol {})",
        event.family, event.sock_type, event.protocol
    )
}

/// Returns the operation name of a record's kind.
pub fn operation(header: &EventHeader) -> &'static str {
    match EventKind::from_u32(header.kind) {
        Some(EventKind::Connect) => "connect",
        Some(EventKind::Sendmsg) => "sendmsg",
        Some(EventKind::Socket) => "socket",
        Some(EventKind::Exec) => "exec",
        Some(EventKind::File) => "file",
        None => "unknown",
    }
}

/// Returns the rule index of a record, `None` for `NO_RULE`.
pub fn rule_index(header: &EventHeader) -> Option<u32> {
    (header.rule != NO_RULE).then_some(header.rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net_record(kind: u32, verdict: u32) -> NetEvent {
        NetEvent {
            header: EventHeader {
                kind,
                verdict,
                boot_time_ns: 1,
                cgroup_id: 2,
                policed_cgroup_id: 2,
                tid: 3,
                pid: 3,
                policy_slot: 0,
                rule: NO_RULE,
                comm: *b"netprobe\0\0\0\0\0\0\0\0",
            },
            addr: [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes([10, 1, 2, 3])],
            port: 8080,
            family: FAMILY_INET,
            protocol: PROTOCOL_TCP,
            sock_type: 1,
            reserved: 0,
            binary: parapet_common::ExecPath {
                len: 4,
                truncated: 0,
                bytes: [b'/'; parapet_common::MAX_EXEC_PATH],
            },
        }
    }

    fn bytes_of(event: &NetEvent) -> Vec<u8> {
        // SAFETY: NetEvent is plain integers without padding.
        unsafe {
            std::slice::from_raw_parts((event as *const NetEvent).cast::<u8>(), size_of::<NetEvent>())
        }
        .to_vec()
    }

    #[test]
    fn decode_net_record() {
        let bytes = bytes_of(&net_record(EventKind::Connect as u32, Verdict::Deny as u32));
        let Ok(Record::Net(event)) = decode(&bytes) else {
            panic!("a connect record decodes as a network record");
        };
        assert_eq!(comm(&event.header), "netprobe");
        assert_eq!(peer_address(&event), "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(event.port, 8080);
        assert_eq!(protocol_name(event.protocol), Some("tcp"));
        assert_eq!(rule_index(&event.header), None);
        assert_eq!(exec_path(&event.binary), Some(("////".into(), false)));
    }

    #[test]
    fn decode_mapped_peer_on_ipv6_socket() {
        let mut event = net_record(EventKind::Connect as u32, Verdict::Deny as u32);
        event.family = parapet_common::net::FAMILY_INET6;
        assert_eq!(
            peer_address(&event),
            "::ffff:10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn exec_rule_names_the_list_entry() {
        let mut header = net_record(EventKind::Exec as u32, Verdict::Deny as u32).header;
        header.rule = (LIST_DENY << RULE_LIST_SHIFT) | 3;
        assert_eq!(exec_rule(&header).as_deref(), Some("spec.exec.deny[3]"));
        header.rule = (LIST_ALLOW << RULE_LIST_SHIFT) | 1;
        assert_eq!(exec_rule(&header).as_deref(), Some("spec.exec.allow[1]"));
        header.rule = NO_RULE;
        assert_eq!(exec_rule(&header), None);
    }

    #[test]
    fn decode_rejects_bad_records() {
        let bytes = bytes_of(&net_record(EventKind::Connect as u32, Verdict::Deny as u32));
        assert!(matches!(decode(&bytes[..10]), Err(DecodeError::Short { .. })));
        assert!(matches!(decode(&bytes[..70]), Err(DecodeError::Short { .. })));
        let unknown_kind = bytes_of(&net_record(99, 0));
        assert_eq!(decode(&unknown_kind).unwrap_err(), DecodeError::UnknownKind { kind: 99 });
        let unknown_verdict = bytes_of(&net_record(1, 7));
        assert_eq!(
            decode(&unknown_verdict).unwrap_err(),
            DecodeError::UnknownVerdict { verdict: 7 }
        );
    }
}
