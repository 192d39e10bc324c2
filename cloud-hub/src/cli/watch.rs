//! `flotilla get <kind> [-l SELECTOR] [--site S] [--field-selector F] [-w]`: lists page by
//! page with the filters, and with `-w` follows the changes after the list's revision,
//! printing each as it comes. A dropped stream is resumed with `Last-Event-ID` (no change
//! lost or shown twice); a resume point the hub no longer keeps (410) lists again.
//!
//! [`SseParser`] reads Server-Sent Events (pure, also used by the tests).

use super::client::{HubClient, HubError};
use super::output::{self, Format, table};
use anyhow::bail;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use shared_proto::Kind;
use std::time::Duration;

/// Page size the CLI asks for.
const PAGE: usize = 500;
/// Longest SSE line accepted (an event carries one object, at most 1 MiB of JSON).
const MAX_SSE_LINE: usize = 4 << 20;

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Reads Server-Sent Events from bytes as they arrive (WHATWG rules: `field: value` lines,
/// comments start with `:`, a blank line ends an event).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    current: SseEvent,
    has_data: bool,
    /// The last `id:` seen, as a client keeps it for `Last-Event-ID`.
    pub last_id: Option<String>,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) -> anyhow::Result<Vec<SseEvent>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() >= MAX_SSE_LINE {
                    bail!("a server-sent event line is longer than {MAX_SSE_LINE} bytes");
                }
                self.line.push(b);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line)).into_owned();
            if line.is_empty() {
                let event = std::mem::take(&mut self.current);
                if self.has_data || event.id.is_some() {
                    out.push(event);
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => {
                    self.current.id = Some(value.to_string());
                    self.last_id = Some(value.to_string());
                }
                "event" => self.current.event = value.to_string(),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// The filters of `get`.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub selector: Option<String>,
    pub site: Option<String>,
    pub field_selector: Option<String>,
    /// Apps, configs and secrets of this namespace only (`None`: every namespace).
    pub namespace: Option<String>,
}

impl Filters {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        q.extend(self.selector.clone().map(|s| ("labelSelector", s)));
        q.extend(self.site.clone().map(|s| ("site", s)));
        q.extend(self.field_selector.clone().map(|s| ("fieldSelector", s)));
        q.extend(self.namespace.clone().map(|s| ("namespace", s)));
        q
    }
}

/// Every page of the filtered list; the list's revision and its items.
pub async fn list_all(
    client: &HubClient,
    kind: Kind,
    filters: &Filters,
) -> anyhow::Result<(u64, Vec<Value>)> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut q = filters.query();
        q.push(("limit", PAGE.to_string()));
        q.extend(token.clone().map(|t| ("continue", t)));
        let page =
            client.get(&format!("/api/v1/{}?{}", kind.plural(), serde_urlencoded::to_string(&q)?)).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        let revision = page["metadata"]["revision"].as_u64().unwrap_or_default();
        match page["metadata"]["continue"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok((revision, items)),
        }
    }
}

/// Lists, prints, then follows the changes until interrupted (or the hub refuses the watch
/// for good).
pub async fn get_and_watch(
    client: &HubClient,
    kind: Kind,
    filters: &Filters,
    format: Format,
) -> anyhow::Result<()> {
    let (revision, items) = list_all(client, kind, filters).await?;
    print_list(kind, &items, format, true)?;
    let mut resume = revision.to_string();
    let mut backoff = Duration::from_millis(500);
    loop {
        match follow(client, kind, filters, format, &mut resume).await {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) if is_gone(&e) => {
                eprintln!("the hub no longer keeps changes since revision {resume}: listing again");
                let (revision, items) = list_all(client, kind, filters).await?;
                print_list(kind, &items, format, false)?;
                resume = revision.to_string();
                continue;
            }
            Err(e) => match e.downcast_ref::<HubError>() {
                Some(h) if h.status.is_client_error() => return Err(e),
                _ => eprintln!("watch interrupted ({e:#}); resuming after {resume}"),
            },
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn is_gone(e: &anyhow::Error) -> bool {
    e.downcast_ref::<HubError>().is_some_and(|h| h.status == StatusCode::GONE)
}

/// One watch connection, until it ends; `resume` follows the last event id.
async fn follow(
    client: &HubClient,
    kind: Kind,
    filters: &Filters,
    format: Format,
    resume: &mut String,
) -> anyhow::Result<()> {
    let mut q = filters.query();
    q.push(("watch", "true".to_string()));
    let path = format!("/api/v1/{}?{}", kind.plural(), serde_urlencoded::to_string(&q)?);
    let resp = client.get_stream_with(&path, &[("last-event-id", resume.as_str())]).await?;
    let mut parser = SseParser::default();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        for event in parser.feed(&chunk?)? {
            if let Some(id) = &event.id {
                resume.clone_from(id);
            }
            match event.event.as_str() {
                "ERROR" => {
                    let v: Value = serde_json::from_str(&event.data).unwrap_or_default();
                    let status = v["status"].as_u64().and_then(|s| StatusCode::from_u16(s as u16).ok());
                    return Err(HubError {
                        status: status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        message: v["detail"].as_str().unwrap_or("the watch failed").to_string(),
                    }
                    .into());
                }
                "BOOKMARK" => {}
                _ => print_event(kind, &event, format)?,
            }
        }
    }
    Ok(())
}

fn print_list(kind: Kind, items: &[Value], format: Format, header: bool) -> anyhow::Result<()> {
    match format {
        Format::Json | Format::Yaml => {
            for item in items {
                print_compact(&serde_json::json!({ "type": "ADDED", "object": item }), format)?;
            }
        }
        Format::Table | Format::Wide => {
            let (h, rows) = super::rows_for(kind, items, format == Format::Wide);
            let text = table(&h, &rows);
            let text =
                if header { text.as_str() } else { text.split_once('\n').map_or("", |(_, rest)| rest) };
            print!("{text}");
        }
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    Ok(())
}

fn print_compact(v: &Value, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Yaml => output::print_value(v, format)?,
        _ => println!("{}", serde_json::to_string(v)?),
    }
    Ok(())
}

fn print_event(kind: Kind, event: &SseEvent, format: Format) -> anyhow::Result<()> {
    let v: Value = serde_json::from_str(&event.data)?;
    match format {
        Format::Json | Format::Yaml => print_compact(&v, format)?,
        Format::Table | Format::Wide => {
            let (_, rows) = super::rows_for(kind, std::slice::from_ref(&v["object"]), format == Format::Wide);
            for row in rows {
                println!("{:<9} {}", event.event, row.join("   "));
            }
        }
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks_and_lines() {
        let mut p = SseParser::default();
        let text = b": heartbeat\n\nid: 7:0\nevent: ADDED\ndata: {\"a\":\ndata: 1}\n\nid: 7\r\nevent: DELETED\r\ndata: x\r\n\r\nevent: ERROR\ndata:{}\n\n";
        let mut events = Vec::new();
        for chunk in text.chunks(3) {
            events.extend(p.feed(chunk).unwrap());
        }
        assert_eq!(
            events,
            vec![
                SseEvent { id: Some("7:0".into()), event: "ADDED".into(), data: "{\"a\":\n1}".into() },
                SseEvent { id: Some("7".into()), event: "DELETED".into(), data: "x".into() },
                SseEvent { id: None, event: "ERROR".into(), data: "{}".into() },
            ]
        );
        assert_eq!(p.last_id.as_deref(), Some("7"));
    }

    #[test]
    fn a_runaway_line_is_refused() {
        let mut p = SseParser::default();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..4 {
            p.feed(&chunk).unwrap();
        }
        assert!(p.feed(b"x").is_err());
    }
}
