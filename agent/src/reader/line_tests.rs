//! Pins the JSON line of each kind of record, byte for byte, to the text
//! that the serde-derived form of `Event` produced, so that the reader's
//! writer cannot drift from the schema in docs/events.md.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use parapet_common::{
    EventHeader, EventKind, ExecPath, MAX_EXEC_PATH, NO_RULE, Verdict,
    exec::{EXEC_EVENT_UNRESOLVED, ExecEvent, LIST_DENY, RULE_LIST_SHIFT, RULE_PATH},
    file::{self, FileEvent},
    net::{FAMILY_INET, FAMILY_INET6, NetEvent, PROTOCOL_UDP},
};

use super::{Clock, Namer};
use crate::identity::{Identities, Identity};

/// Cgroup of a named container.
const CONTAINER_CGROUP: u64 = 4242;
/// Cgroup of a named pod, without a container.
const POD_CGROUP: u64 = 77;
/// A pid that no process has, so `/proc/PID/exe` cannot be read.
const NO_PROCESS: u32 = u32::MAX;

fn namer() -> Namer {
    let mut identities = Identities::new(Duration::from_secs(60));
    let container = Identity {
        namespace: "clinic \"east\"".to_owned(),
        pod: "café-0".to_owned(),
        pod_uid: "0b7e-11".to_owned(),
        container: Some("db\\main".to_owned()),
        container_id: Some("c0ffee".to_owned()),
    };
    let pod = Identity {
        namespace: "clinic".to_owned(),
        pod: "api".to_owned(),
        pod_uid: String::new(),
        container: None,
        container_id: None,
    };
    identities.set_cgroups(HashMap::from([(CONTAINER_CGROUP, container), (POD_CGROUP, pod)]));
    identities.set_slot_policy(3, "ro\tpolicy");
    Namer::new("node \"a\"".to_owned(), Arc::new(RwLock::new(identities)))
}

/// Wall clock 2026-01-01T00:00:00Z at boot time 5 s.
fn clock() -> Clock {
    Clock { realtime_minus_boottime_ns: 1_767_225_600_000_000_000 - 5_000_000_000 }
}

fn line_of<T>(record: &T) -> String {
    // SAFETY: the record types are plain integers without padding.
    let bytes = unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) };
    let published = namer().name(bytes, &clock()).unwrap();
    String::from_utf8(published.line.into_vec()).unwrap()
}

fn path(text: &[u8], truncated: bool) -> ExecPath {
    let mut bytes = [0; MAX_EXEC_PATH];
    bytes[..text.len()].copy_from_slice(text);
    ExecPath { len: text.len() as u32, truncated: u32::from(truncated), bytes }
}

fn header(kind: EventKind, verdict: Verdict, cgroup_id: u64, comm: &[u8]) -> EventHeader {
    let mut padded = [0; 16];
    padded[..comm.len()].copy_from_slice(comm);
    EventHeader {
        kind: kind as u32,
        verdict: verdict as u32,
        boot_time_ns: 6_000_000_007,
        cgroup_id,
        policed_cgroup_id: cgroup_id,
        tid: 11,
        pid: 10,
        policy_slot: 3,
        rule: NO_RULE,
        comm: padded,
    }
}

fn net(header: EventHeader, family: u16, addr: [u32; 4], protocol: u32) -> NetEvent {
    NetEvent {
        header,
        addr,
        port: 53,
        family,
        protocol,
        sock_type: 2,
        reserved: 0,
        binary: path(b"/usr/bin/dig", false),
    }
}

const V4_PEER: [u32; 4] = [0, 0, u32::from_be(0xffff), u32::from_ne_bytes([10, 0, 0, 9])];

#[test]
fn sendmsg_line_of_named_container() {
    let mut header = header(EventKind::Sendmsg, Verdict::Deny, CONTAINER_CGROUP, b"dig");
    header.rule = 2;
    let line = line_of(&net(header, FAMILY_INET, V4_PEER, PROTOCOL_UDP));
    let expected = "{\"time\":\"2026-01-01T00:00:01.000000007Z\",\"node\":\"node \\\"a\\\"\"\
        ,\"kind\":\"network\",\"operation\":\"sendmsg\",\"verdict\":\"deny\"\
        ,\"namespace\":\"clinic \\\"east\\\"\",\"pod\":\"café-0\"\
        ,\"pod_uid\":\"0b7e-11\",\"container\":\"db\\\\main\"\
        ,\"container_id\":\"c0ffee\",\"cgroup_id\":4242,\"pid\":10,\"tid\":11\
        ,\"process\":\"dig\",\"binary\":\"/usr/bin/dig\",\"binary_truncated\":false\
        ,\"peer\":{\"address\":\"10.0.0.9\",\"port\":53,\"protocol\":\"udp\"}\
        ,\"policy\":\"ro\\tpolicy\",\"rule\":\"spec.network.egress[2]\"}\n";
    assert_eq!(line, expected);
}

#[test]
fn connect_line_of_unknown_cgroup() {
    let mut header = header(EventKind::Connect, Verdict::Audit, 9, b"curl");
    header.policy_slot = 8;
    header.boot_time_ns = 0;
    let addr = [u32::from_be(0x2001_0db8), 0, 0, u32::from_be(1)];
    let mut record = net(header, FAMILY_INET6, addr, 132);
    record.binary = path(&[b'x'; MAX_EXEC_PATH - 1], true);
    let expected = "{\"time\":\"2025-12-31T23:59:55.000000000Z\",\"node\":\"node \\\"a\\\"\"\
        ,\"kind\":\"network\",\"operation\":\"connect\",\"verdict\":\"audit\"\
        ,\"namespace\":null,\"pod\":null,\"pod_uid\":null,\"container\":null\
        ,\"container_id\":null,\"cgroup_id\":9,\"pid\":10,\"tid\":11\
        ,\"process\":\"curl\",\"binary\":\"BINARY\",\"binary_truncated\":true\
        ,\"peer\":{\"address\":\"2001:db8::1\",\"port\":53,\"protocol\":\"132\"}\
        ,\"policy\":null,\"rule\":null}\n";
    let expected = expected.replace("BINARY", &"x".repeat(MAX_EXEC_PATH - 1));
    assert_eq!(line_of(&record), expected);
}

#[test]
fn socket_line_names_policed_ancestor() {
    let mut header = header(EventKind::Socket, Verdict::Deny, 9, b"ping");
    header.policed_cgroup_id = POD_CGROUP;
    let record = net(header, 17, [0; 4], 0);
    let expected = "{\"time\":\"2026-01-01T00:00:01.000000007Z\",\"node\":\"node \\\"a\\\"\"\
        ,\"kind\":\"network\",\"operation\":\"socket\",\"verdict\":\"deny\"\
        ,\"namespace\":\"clinic\",\"pod\":\"api\",\"pod_uid\":null\
        ,\"container\":null,\"container_id\":null,\"cgroup_id\":9,\"pid\":10\
        ,\"tid\":11,\"process\":\"ping\",\"binary\":\"/usr/bin/dig\"\
        ,\"binary_truncated\":false,\"peer\":null,\"policy\":\"ro\\tpolicy\"\
        ,\"rule\":null\
        ,\"detail\":\"packet socket (family 17, type 2, protocol 0)\"}\n";
    assert_eq!(line_of(&record), expected);
}

#[test]
fn exec_line_with_escaped_comm() {
    let mut header = header(EventKind::Exec, Verdict::Deny, CONTAINER_CGROUP, b"a\"b\x01\xffc");
    header.rule = (LIST_DENY << RULE_LIST_SHIFT) | 3;
    let record = ExecEvent {
        header,
        dev: (259 << 20) | 2,
        ino: 1_234_567,
        flags: EXEC_EVENT_UNRESOLVED,
        matched_by: RULE_PATH,
        binary: path("/bin/nc\u{7f}é".as_bytes(), false),
    };
    let expected = "{\"time\":\"2026-01-01T00:00:01.000000007Z\",\"node\":\"node \\\"a\\\"\"\
        ,\"kind\":\"exec\",\"operation\":\"exec\",\"verdict\":\"deny\"\
        ,\"namespace\":\"clinic \\\"east\\\"\",\"pod\":\"café-0\"\
        ,\"pod_uid\":\"0b7e-11\",\"container\":\"db\\\\main\"\
        ,\"container_id\":\"c0ffee\",\"cgroup_id\":4242,\"pid\":10,\"tid\":11\
        ,\"process\":\"a\\\"b\\u0001�c\",\"binary\":\"/bin/nc\u{7f}é\"\
        ,\"binary_truncated\":false,\"peer\":null,\"policy\":\"ro\\tpolicy\"\
        ,\"rule\":\"spec.exec.deny[3]\"\
        ,\"detail\":\"file device 259:2 inode 1234567, matched by path; not blocked because the agent had not yet looked up this container's allowed files\"}\n";
    assert_eq!(line_of(&record), expected);
}

fn file_record(op: u32, dirfd: i32, ret: i64, given_path: ExecPath) -> FileEvent {
    FileEvent {
        header: header(EventKind::File, Verdict::Deny, CONTAINER_CGROUP, b"sh"),
        op,
        dirfd,
        ret,
        path: given_path,
        binary: path(b"/bin/busybox", false),
    }
}

#[test]
fn file_line_of_absolute_path() {
    let record = file_record(file::op::OPENAT, file::AT_FDCWD, -30, path(b"/etc/pass\nwd", false));
    let expected = "{\"time\":\"2026-01-01T00:00:01.000000007Z\",\"node\":\"node \\\"a\\\"\"\
        ,\"kind\":\"file\",\"operation\":\"openat\",\"verdict\":\"deny\"\
        ,\"namespace\":\"clinic \\\"east\\\"\",\"pod\":\"café-0\"\
        ,\"pod_uid\":\"0b7e-11\",\"container\":\"db\\\\main\"\
        ,\"container_id\":\"c0ffee\",\"cgroup_id\":4242,\"pid\":10,\"tid\":11\
        ,\"process\":\"sh\",\"binary\":\"/bin/busybox\",\"binary_truncated\":false\
        ,\"peer\":null,\"policy\":\"ro\\tpolicy\"\
        ,\"rule\":\"spec.filesystem.readOnly\"\
        ,\"detail\":\"openat returned Read-only file system (os error 30)\"\
        ,\"path\":\"/etc/pass\\nwd\",\"resolved_path\":\"/etc/pass\\nwd\"\
        ,\"path_truncated\":false}\n";
    assert_eq!(line_of(&record), expected);
}

#[test]
fn file_line_of_truncated_kernel_path() {
    let mut record = file_record(file::op::UNLINKAT, file::PATH_FROM_KERNEL, 0, path(b"deep/name", true));
    record.header.verdict = Verdict::Audit as u32;
    let expected = "{\"time\":\"2026-01-01T00:00:01.000000007Z\",\"node\":\"node \\\"a\\\"\"\
        ,\"kind\":\"file\",\"operation\":\"unlinkat\",\"verdict\":\"audit\"\
        ,\"namespace\":\"clinic \\\"east\\\"\",\"pod\":\"café-0\"\
        ,\"pod_uid\":\"0b7e-11\",\"container\":\"db\\\\main\"\
        ,\"container_id\":\"c0ffee\",\"cgroup_id\":4242,\"pid\":10,\"tid\":11\
        ,\"process\":\"sh\",\"binary\":\"/bin/busybox\",\"binary_truncated\":false\
        ,\"peer\":null,\"policy\":\"ro\\tpolicy\"\
        ,\"rule\":\"spec.filesystem.readOnly\",\"path\":\"deep/name\"\
        ,\"path_truncated\":true}\n";
    assert_eq!(line_of(&record), expected);
}

#[test]
fn file_line_of_descriptor_call() {
    let mut record = file_record(file::op::FCHMOD, -1, -1, path(b"", false));
    record.header.pid = NO_PROCESS;
    record.binary = path(b"", false);
    let expected = "{\"time\":\"2026-01-01T00:00:01.000000007Z\",\"node\":\"node \\\"a\\\"\"\
        ,\"kind\":\"file\",\"operation\":\"fchmod\",\"verdict\":\"deny\"\
        ,\"namespace\":\"clinic \\\"east\\\"\",\"pod\":\"café-0\"\
        ,\"pod_uid\":\"0b7e-11\",\"container\":\"db\\\\main\"\
        ,\"container_id\":\"c0ffee\",\"cgroup_id\":4242,\"pid\":4294967295\
        ,\"tid\":11,\"process\":\"sh\",\"binary\":null,\"binary_truncated\":false\
        ,\"peer\":null,\"policy\":\"ro\\tpolicy\"\
        ,\"rule\":\"spec.filesystem.readOnly\"\
        ,\"detail\":\"fchmod on descriptor -1 returned Operation not permitted (os error 1)\"\
        ,\"path_truncated\":false}\n";
    assert_eq!(line_of(&record), expected);
}
