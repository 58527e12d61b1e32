//! The JSON line of a kernel record, written straight from the record into
//! a reused buffer. Its members, their order and their values are those of
//! [`crate::event::Event`] as serde_json writes it, which docs/events.md
//! describes. The tests in `line_tests` pin the text of each kind.

use std::{borrow::Cow, io::Write as _};

use chrono::{DateTime, SecondsFormat};
use parapet_common::{EventHeader, EventKind, Verdict, file::PATH_FROM_KERNEL, net::NetEvent};

use super::names::{Policy, Workload};
use crate::event::{self, Kind, Record, VerdictName};

/// Writer of event lines, with what every line of this agent shares.
pub struct LineWriter {
    /// The `node` value, as JSON.
    node: Box<[u8]>,
    time: TimeText,
    buffer: Vec<u8>,
}

/// Bytes reserved for a line. Most lines fit.
const LINE_CAPACITY: usize = 1024;

impl LineWriter {
    pub fn new(node: &str) -> Self {
        let mut json = Vec::new();
        push_json_str(&mut json, node);
        Self { node: json.into_boxed_slice(), time: TimeText::default(), buffer: Vec::with_capacity(LINE_CAPACITY) }
    }

    /// Writes the line of `record`, with its newline, and returns it. The
    /// record's time is `wall_ns`, nanoseconds since the Unix epoch.
    pub fn write(&mut self, record: &Record, wall_ns: i64, workload: &Workload, policy: &Policy) -> &[u8] {
        let header = record.header();
        let out = &mut self.buffer;
        out.clear();
        out.extend_from_slice(b"{\"time\":\"");
        self.time.push(wall_ns, out);

        out.extend_from_slice(b"\",\"node\":");
        out.extend_from_slice(&self.node);
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(kind(record).as_str().as_bytes());
        out.extend_from_slice(b"\",\"operation\":");
        push_json_str(out, operation(record));
        out.extend_from_slice(b",\"verdict\":\"");
        out.extend_from_slice(verdict(header).as_str().as_bytes());
        out.extend_from_slice(b"\",");

        out.extend_from_slice(&workload.json);
        out.extend_from_slice(b",\"cgroup_id\":");
        push_number(out, header.cgroup_id);
        out.extend_from_slice(b",\"pid\":");
        push_number(out, header.pid);
        out.extend_from_slice(b",\"tid\":");
        push_number(out, header.tid);
        out.extend_from_slice(b",\"process\":");
        push_json_str(out, &event::comm(header));

        push_binary(out, record);
        out.extend_from_slice(b",\"peer\":");
        match record {
            Record::Net(net) if header.kind != EventKind::Socket as u32 => push_peer(out, net),
            _ => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"policy\":");
        out.extend_from_slice(&policy.json);
        out.extend_from_slice(b",\"rule\":");
        push_rule(out, record);

        push_optional_members(out, record);
        out.extend_from_slice(b"}\n");
        out
    }
}

pub fn kind(record: &Record) -> Kind {
    match record {
        Record::Net(_) => Kind::Network,
        Record::Exec(_) => Kind::Exec,
        Record::File(_) => Kind::File,
    }
}

fn operation(record: &Record) -> &'static str {
    match record {
        Record::File(file) => parapet_common::file::op::name(file.op),
        _ => event::operation(record.header()),
    }
}

/// Returns the verdict of a record. [`event::decode`] rejects unknown
/// verdicts, so the fallback is never taken.
pub fn verdict(header: &EventHeader) -> VerdictName {
    Verdict::from_u32(header.verdict)
        .map(VerdictName::from)
        .unwrap_or(VerdictName::Deny)
}

/// Writes `binary` and `binary_truncated`: the program the kernel
/// recorded, or else `/proc/PID/exe` read now.
fn push_binary(out: &mut Vec<u8>, record: &Record) {
    let recorded = match record {
        Record::Net(net) => &net.binary,
        Record::Exec(exec) => &exec.binary,
        Record::File(file) => &file.binary,
    };
    let (binary, truncated) = match event::exec_path(recorded) {
        Some((path, truncated)) => (Some(path), truncated),
        None => {
            let pid = record.header().pid;
            let read = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            (read.map(|path| Cow::Owned(path.to_string_lossy().into_owned())), false)
        }
    };
    out.extend_from_slice(b",\"binary\":");
    push_json_opt_str(out, binary.as_deref());
    out.extend_from_slice(b",\"binary_truncated\":");
    push_bool(out, truncated);
}

fn push_peer(out: &mut Vec<u8>, net: &NetEvent) {
    // `write!` to a `Vec` cannot fail.
    let _ = write!(out, "{{\"address\":\"{}\",\"port\":{},\"protocol\":\"", event::peer_address(net), net.port);
    match event::protocol_name(net.protocol) {
        Some(name) => out.extend_from_slice(name.as_bytes()),
        None => push_number(out, net.protocol),
    }
    out.extend_from_slice(b"\"}");
}

fn push_rule(out: &mut Vec<u8>, record: &Record) {
    let header = record.header();
    match record {
        Record::Net(_) if header.kind == EventKind::Socket as u32 => out.extend_from_slice(b"null"),
        Record::Net(_) => match event::rule_index(header) {
            Some(index) => {
                out.extend_from_slice(b"\"spec.network.egress[");
                push_number(out, index);
                out.extend_from_slice(b"]\"");
            }
            None => out.extend_from_slice(b"null"),
        },
        Record::Exec(_) => push_json_opt_str(out, event::exec_rule(header).as_deref()),
        Record::File(_) => out.extend_from_slice(b"\"spec.filesystem.readOnly\""),
    }
}

/// Writes the members that only some kinds have: `detail`, and for file
/// records `path`, `resolved_path` and `path_truncated`. An absent value
/// has no member at all.
fn push_optional_members(out: &mut Vec<u8>, record: &Record) {
    let detail = match record {
        Record::Net(net) if net.header.kind == EventKind::Socket as u32 => Some(event::socket_detail(net)),
        Record::Net(_) => None,
        Record::Exec(exec) => Some(event::exec_detail(exec)),
        Record::File(file) => file_detail(file),
    };
    if let Some(detail) = detail {
        out.extend_from_slice(b",\"detail\":");
        push_json_str(out, &detail);
    }
    let Record::File(file) = record else {
        return;
    };
    let given = event::exec_path(&file.path);
    let truncated = given.as_ref().is_some_and(|(_, truncated)| *truncated);
    let given = given.map(|(path, _)| path);
    let resolved = if file.dirfd == PATH_FROM_KERNEL {
        // Rebuilt by an LSM program: absolute in the container already,
        // unless cut.
        given.clone().filter(|_| !truncated)
    } else {
        let pid = file.header.pid;
        match given.as_deref() {
            Some(_) if truncated => None,
            Some(path) => resolve_path(pid, file.dirfd, path).map(Cow::Owned),
            // A call on a descriptor: the path is the descriptor's.
            None => descriptor_path(pid, file.dirfd).map(Cow::Owned),
        }
    };
    if let Some(path) = given {
        out.extend_from_slice(b",\"path\":");
        push_json_str(out, &path);
    }
    if let Some(path) = resolved {
        out.extend_from_slice(b",\"resolved_path\":");
        push_json_str(out, &path);
    }
    out.extend_from_slice(b",\"path_truncated\":");
    push_bool(out, truncated);
}

/// Makes a path that a process gave absolute, against its working
/// directory (`AT_FDCWD`) or the directory descriptor it used, read from
/// `/proc` when the event arrives. `None` when that is gone.
fn resolve_path(pid: u32, dirfd: i32, path: &str) -> Option<String> {
    if path.starts_with('/') {
        return Some(path.to_owned());
    }
    let base = if dirfd == parapet_common::file::AT_FDCWD {
        format!("/proc/{pid}/cwd")
    } else {
        format!("/proc/{pid}/fd/{dirfd}")
    };
    let base = std::fs::read_link(base).ok()?;
    Some(base.join(path).to_string_lossy().into_owned())
}

/// Describes a file record: the call, the descriptor when the call gave
/// no path, and the error the kernel returned.
fn file_detail(file: &parapet_common::file::FileEvent) -> Option<String> {
    let name = parapet_common::file::op::name(file.op);
    let call = if file.path.len == 0 {
        format!("{name} on descriptor {}", file.dirfd)
    } else {
        name.to_owned()
    };
    if file.ret < 0 {
        // `unsigned_abs`, because `-file.ret` overflows for `i64::MIN`.
        let errno = i32::try_from(file.ret.unsigned_abs()).unwrap_or(i32::MAX);
        let error = std::io::Error::from_raw_os_error(errno);
        Some(format!("{call} returned {error}"))
    } else if file.path.len == 0 {
        Some(call)
    } else {
        None
    }
}

/// Returns the path of a process's open descriptor, read from `/proc`
/// when the event arrives. `None` when the process or descriptor is gone.
fn descriptor_path(pid: u32, fd: i32) -> Option<String> {
    if fd < 0 {
        return None;
    }
    let path = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    Some(path.to_string_lossy().into_owned())
}

/// Appends `text` as a JSON string, escaped as serde_json escapes it.
pub fn push_json_str(out: &mut Vec<u8>, text: &str) {
    // Serializing a string into a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, text);
}

/// Appends `text` as a JSON string, or `null`.
pub fn push_json_opt_str(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => push_json_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_number(out: &mut Vec<u8>, number: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
}

fn push_bool(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

/// RFC 3339 times in UTC with nanoseconds, as chrono writes them with
/// `SecondsFormat::Nanos`, with the date and time of the last second kept:
/// records arrive in batches from the same second.
#[derive(Default)]
pub struct TimeText {
    /// The last second formatted, in seconds since the Unix epoch.
    seconds: Option<i64>,
    /// Its text up to the decimal point, such as `2026-01-01T00:00:00`.
    prefix: String,
}

impl TimeText {
    /// Appends the time `wall_ns` nanoseconds after the Unix epoch.
    pub fn push(&mut self, wall_ns: i64, out: &mut Vec<u8>) {
        let seconds = wall_ns.div_euclid(1_000_000_000);
        if self.seconds != Some(seconds) {
            let text = DateTime::from_timestamp_nanos(wall_ns).to_rfc3339_opts(SecondsFormat::Nanos, true);
            let point = text.rfind('.').unwrap_or(text.len());
            self.prefix.clear();
            self.prefix.push_str(&text[..point]);
            self.seconds = Some(seconds);
        }
        let nanos = wall_ns.rem_euclid(1_000_000_000);
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(nanos);
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(b'.');
        out.extend(std::iter::repeat_n(b'0', 9 - digits.len()));
        out.extend_from_slice(digits.as_bytes());
        out.push(b'Z');
    }
}

#[cfg(test)]
mod tests {
    use parapet_common::{ExecPath, MAX_EXEC_PATH, NO_RULE, file};

    use super::*;

    fn chrono_text(wall_ns: i64) -> String {
        DateTime::from_timestamp_nanos(wall_ns).to_rfc3339_opts(SecondsFormat::Nanos, true)
    }

    #[test]
    fn time_text_matches_chrono() {
        let mut time = TimeText::default();
        let edges = [i64::MIN, i64::MIN + 1, -1_000_000_001, -1_000_000_000, -999_999_999, -1, 0, 1, 999_999_999];
        let recent = 1_767_225_600_000_000_000i64;
        let around_recent = (0..2000).map(|step| recent - 1_000_000_000 + step * 999_999);
        let values = edges.into_iter().chain(around_recent).chain([i64::MAX - 1, i64::MAX]);
        for wall_ns in values {
            let mut out = Vec::new();
            time.push(wall_ns, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), chrono_text(wall_ns), "at {wall_ns} ns");
        }
    }

    #[test]
    fn json_str_escapes_as_serde() {
        let text = "a\"b\\c\n\t\u{1}\u{7f}é";
        let mut out = Vec::new();
        push_json_str(&mut out, text);
        assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(text).unwrap());
    }

    fn file_event(ret: i64) -> file::FileEvent {
        let empty = ExecPath {
            len: 0,
            truncated: 0,
            bytes: [0; MAX_EXEC_PATH],
        };
        file::FileEvent {
            header: EventHeader {
                kind: EventKind::File as u32,
                verdict: 1,
                boot_time_ns: 0,
                cgroup_id: 0,
                policed_cgroup_id: 0,
                tid: 1,
                pid: 1,
                policy_slot: 0,
                rule: NO_RULE,
                comm: [0; 16],
            },
            op: file::op::OPENAT,
            dirfd: 3,
            ret,
            path: empty,
            binary: empty,
        }
    }

    #[test]
    fn file_detail_names_the_error() {
        assert_eq!(
            file_detail(&file_event(-13)).as_deref(),
            Some("openat on descriptor 3 returned Permission denied (os error 13)")
        );
    }

    /// Found by the `event_record` fuzz target: negating `i64::MIN`
    /// overflowed, which panics with overflow checks and gave errno 0
    /// without them.
    #[test]
    fn file_detail_of_most_negative_return() {
        let detail = file_detail(&file_event(i64::MIN)).unwrap();
        assert!(
            detail.starts_with("openat on descriptor 3 returned "),
            "{detail}"
        );
        assert!(detail.ends_with("(os error 2147483647)"), "{detail}");
    }
}
