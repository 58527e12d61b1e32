//! `parapet tail`: follows live violations from the local agent's API socket.

use std::{io::Write as _, path::Path};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use crate::{
    api::{Missed, Request, Subscription},
    event::Event,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line of text per event.
    Text,
    /// One JSON object per line, as the agent prints them.
    Json,
}

/// Streams events until the agent closes the connection.
pub async fn run(socket: &Path, subscription: Subscription, output: Output) -> anyhow::Result<()> {
    let stream = connect(socket).await?;
    let (read_half, mut write_half) = stream.into_split();
    let request = serde_json::to_string(&Request::Follow(subscription))?;
    write_half.write_all(format!("{request}\n").as_bytes()).await?;
    let mut lines = BufReader::new(read_half).lines();
    let stdout = std::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let mut out = stdout.lock();
        if let Ok(missed) = serde_json::from_str::<Missed>(&line) {
            eprintln!("parapet tail: missed {} events because this client read too slowly", missed.missed);
            continue;
        }
        if let Ok(error) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(message) = error.get("error").and_then(|m| m.as_str())
        {
            anyhow::bail!("the agent rejected the request: {message}");
        }
        match output {
            Output::Json => writeln!(out, "{line}")?,
            Output::Text => {
                let event: Event = serde_json::from_str(&line)
                    .with_context(|| format!("invalid event from the agent: {line}"))?;
                writeln!(out, "{}", text_line(&event))?;
            }
        }
        out.flush()?;
    }
    Ok(())
}

/// One event as a line of text: time, verdict, kind, workload, process,
/// target, policy and rule.
pub fn text_line(event: &Event) -> String {
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
        None => "-".to_owned(),
    };
    format!(
        "{} {:<5} {} {} {} pid={} {} -> {} policy={} rule={}",
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
    write_half.write_all(format!("{request}\n").as_bytes()).await?;
    let line = BufReader::new(read_half)
        .lines()
        .next_line()
        .await?
        .context("the agent closed the connection without a status")?;
    serde_json::from_str(&line).with_context(|| format!("invalid status from the agent: {line}"))
}
