//! How the CLI prints objects: aligned tables for people, JSON or YAML for tools.

use serde_json::Value;
use shared_proto::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
}

pub fn print_value(v: &Value, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(v)?),
        _ => println!("{}", serde_json::to_string_pretty(v)?),
    }
    Ok(())
}

pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = match cur.get(p) {
            Some(x) => x,
            None => return "",
        };
    }
    cur.as_str().unwrap_or("")
}

pub fn n(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = match cur.get(p) {
            Some(x) => x,
            None => return 0,
        };
    }
    cur.as_u64().unwrap_or(0)
}

/// "3m", "2h", "5d": how long ago an RFC 3339 time was.
pub fn age(rfc3339: &str, now: Timestamp) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(rfc3339) else { return "-".into() };
    let secs = now.since(Timestamp::from_system_time(t)).as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

pub fn labels(v: &Value) -> String {
    v.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["NAME", "PHASE"],
            &[vec!["a".into(), "Online".into()], vec!["long-name".into(), "Offline".into()]],
        );
        assert_eq!(t, "NAME        PHASE\na           Online\nlong-name   Offline\n");
    }

    #[test]
    fn ages_are_short() {
        let now = Timestamp(10 * 86_400_000);
        assert_eq!(age(&Timestamp(now.0 - 90_000).to_rfc3339(), now), "1m");
        assert_eq!(age(&Timestamp(now.0 - 3 * 86_400_000).to_rfc3339(), now), "3d");
        assert_eq!(age("garbage", now), "-");
    }
}
