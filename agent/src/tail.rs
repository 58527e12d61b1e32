//! `parapet tail`: follows live violations from the local agent's API socket.

use std::{io::Write as _, path::Path};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use crate::{
    api::{KernelDropped, Missed, Notice, Request, Subscription},
    event::{Event, Kind, VerdictName},
};

/// `--kind` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KindFilter {
    Network,
    File,
    Exec,
}

impl From<KindFilter> for Kind {
    fn from(kind: KindFilter) -> Self {
        match kind {
            KindFilter::Network => Self::Network,
            KindFilter::File => Self::File,
            KindFilter::Exec => Self::Exec,
        }
    }
}

/// `--verdict` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerdictFilter {
    Allow,
    Deny,
    Audit,
    NotEnforced,
}

impl From<VerdictFilter> for VerdictName {
    fn from(verdict: VerdictFilter) -> Self {
        match verdict {
            VerdictFilter::Allow => Self::Allow,
            VerdictFilter::Deny => Self::Deny,
            VerdictFilter::Audit => Self::Audit,
            VerdictFilter::NotEnforced => Self::NotEnforced,
        }
    }
}

/// Parses a `--since` period: a whole number and a unit, `s`, `m` or `h`.
pub fn parse_since(text: &str) -> Result<std::time::Duration, String> {
    let expected = "expected a whole number and a unit, such as 30s, 5m or 1h";
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid period {text:?}: {expected}"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        _ => return Err(format!("invalid unit in {text:?}: {expected}")),
    };
    Ok(std::time::Duration::from_secs(seconds))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line of text per event.
    Text,
    /// One JSON object per line, as the agent prints them.
    Json,
}

/// Streams events until the agent closes the connection, which is an error:
/// the agent closes it only when it stops.
pub async fn run(socket: &Path, subscription: Subscription, output: Output) -> anyhow::Result<()> {
    let stream = connect(socket).await?;
    let (read_half, mut write_half) = stream.into_split();
    let request = serde_json::to_string(&Request::Follow(subscription))?;
    // A refused client may fail to send while the agent's reply waits.
    let sent = write_half.write_all(format!("{request}\n").as_bytes()).await;
    let mut reader = BufReader::with_capacity(READ_BUFFER, read_half);
    // Bytes rather than a `String`: JSON output passes the agent's lines
    // on unchanged, with no UTF-8 check or parse per event.
    let mut line = Vec::new();
    let mut out = Vec::with_capacity(WRITE_BATCH);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            write_out(&mut out)?;
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let is_message = [r#"{"missed":"#, r#"{"kernel_dropped":"#, r#"{"notice":"#, r#"{"error":"#]
            .iter()
            .any(|prefix| text.starts_with(prefix.as_bytes()));
        if is_message {
            // Events printed so far come before the message about them.
            write_out(&mut out)?;
            message(&String::from_utf8_lossy(text))?;
            continue;
        }
        match output {
            Output::Json => {
                out.extend_from_slice(text);
                out.push(b'\n');
            }
            Output::Text => {
                let event: Event = serde_json::from_slice(text).with_context(|| {
                    format!("invalid event from the agent: {}", String::from_utf8_lossy(text))
                })?;
                out.extend_from_slice(text_line(&event).as_bytes());
                out.push(b'\n');
            }
        }
        // Write when no further whole line is buffered, so that output
        // never waits for the next event, and write once per batch under
        // a flood.
        if out.len() >= WRITE_BATCH || !reader.buffer().contains(&b'\n') {
            write_out(&mut out)?;
        }
    }
    sent.context("failed to send the request to the agent")?;
    anyhow::bail!("the agent closed the event stream (did it stop or restart?)")
}

/// Bytes read from the agent at a time.
const READ_BUFFER: usize = 256 * 1024;
/// Bytes of output lines written to stdout at a time.
const WRITE_BATCH: usize = 64 * 1024;

/// Writes the output lines gathered so far to stdout.
fn write_out(out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out)?;
    stdout.flush()?;
    out.clear();
    Ok(())
}

/// Handles a line from the agent that is not an event: a count of missed
/// or dropped events or a notice goes to stderr, an error ends the stream.
fn message(line: &str) -> anyhow::Result<()> {
    if let Ok(missed) = serde_json::from_str::<Missed>(line) {
        eprintln!("parapet tail: missed {} events because this client read too slowly", missed.missed);
    } else if let Ok(dropped) = serde_json::from_str::<KernelDropped>(line) {
        eprintln!(
            "parapet tail: the kernel dropped {} events because the agent's ring buffer was full; parapet_events_lost_total counts them",
            dropped.kernel_dropped
        );
    } else if let Ok(notice) = serde_json::from_str::<Notice>(line) {
        eprintln!("parapet tail: {}", notice.notice);
    } else if let Ok(error) = serde_json::from_str::<serde_json::Value>(line)
        && let Some(message) = error.get("error").and_then(|m| m.as_str())
    {
        anyhow::bail!("the agent rejected the request: {message}");
    } else {
        anyhow::bail!("invalid message from the agent: {line}");
    }
    Ok(())
}

/// One event as a line of text: time, verdict, kind, workload, process,
/// target (peer or path), policy and rule. Control characters in names and
/// paths are escaped, so that an event is always one line.
pub fn text_line(event: &Event) -> String {
    let line = raw_text_line(event);
    let mut escaped = String::with_capacity(line.len());
    for c in line.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

fn raw_text_line(event: &Event) -> String {
    let workload = format!(
        "{}/{}/{}",
        event.namespace.as_deref().unwrap_or("-"),
        event.pod.as_deref().unwrap_or("-"),
        event.container.as_deref().unwrap_or("-"),
    );
    let target = match &event.peer {
        Some(peer) if peer.address.is_ipv6() => {
            format!("[{}]:{}/{}", peer.address, peer.port, peer.protocol)
        }
        Some(peer) => format!("{}:{}/{}", peer.address, peer.port, peer.protocol),
        None => event
            .resolved_path
            .as_deref()
            .or(event.path.as_deref())
            .unwrap_or("-")
            .to_owned(),
    };
    let detail = event
        .detail
        .as_deref()
        .map(|detail| format!(" ({detail})"))
        .unwrap_or_default();
    format!(
        "{} {:<5} {} {} {} pid={} {} -> {} policy={} rule={}{detail}",
        event.time,
        event.verdict.as_str(),
        event.kind.as_str(),
        event.operation,
        workload,
        event.pid,
        event.binary.as_deref().unwrap_or(&event.process),
        target,
        event.policy.as_deref().unwrap_or("-"),
        event.rule.as_deref().unwrap_or("none"),
    )
}

/// How long `status` waits for the agent's reply.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects to the agent's API socket.
pub async fn connect(socket: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(socket).await.with_context(|| {
        format!(
            "failed to connect to the agent's API socket {} (is `parapet agent` running, and are you root?)",
            socket.display()
        )
    })
}

/// Asks the agent for its status.
pub async fn status(socket: &Path) -> anyhow::Result<crate::status::Status> {
    let stream = connect(socket).await?;
    let (read_half, mut write_half) = stream.into_split();
    let request = serde_json::to_string(&Request::Status {})?;
    // An agent that refuses the client replies and closes at once, so the
    // request may fail to send while the reply is there to read.
    let sent = write_half.write_all(format!("{request}\n").as_bytes()).await;
    let mut lines = BufReader::new(read_half).lines();
    let line = tokio::time::timeout(STATUS_TIMEOUT, lines.next_line())
        .await
        .map_err(|_| anyhow::anyhow!("the agent sent no status within {STATUS_TIMEOUT:?}"))??;
    let Some(line) = line else {
        sent.context("failed to send the status request to the agent")?;
        anyhow::bail!("the agent closed the connection without a status");
    };
    if let Ok(reply) = serde_json::from_str::<serde_json::Value>(&line)
        && let Some(message) = reply.get("error").and_then(|m| m.as_str())
    {
        anyhow::bail!("the agent rejected the request: {message}");
    }
    serde_json::from_str(&line).with_context(|| format!("invalid status from the agent: {line}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_periods() {
        assert_eq!(parse_since("30s"), Ok(std::time::Duration::from_secs(30)));
        assert_eq!(parse_since("5m"), Ok(std::time::Duration::from_secs(300)));
        assert_eq!(parse_since("2h"), Ok(std::time::Duration::from_secs(7200)));
        for bad in ["", "5", "m", "5d", "-5m", "1.5h"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_line_stays_one_line() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "time": "2026-12-04T00:00:00Z", "node": "n", "kind": "file", "operation": "openat",
            "verdict": "deny", "namespace": "clinic", "pod": "db", "pod_uid": null,
            "container": "db", "container_id": null, "cgroup_id": 1, "pid": 7, "tid": 7,
            "process": "sh", "binary": "/bin/busybox", "binary_truncated": false, "peer": null,
            "policy": "ro", "rule": "spec.filesystem.readOnly", "path": "/etc/x\ny"
        }))
        .unwrap();
        let line = text_line(&event);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("-> /etc/x\\ny policy=ro"), "{line}");
    }
}
