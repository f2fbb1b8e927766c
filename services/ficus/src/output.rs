//! How the operator commands print: human tables by default, or the proto3 JSON mapping
//! as JSON or YAML for scripts (`-o json|yaml`), so machine output is exactly what the
//! gRPC API and the spec files speak.
//!
//! Human output goes through [`Table`] and the small formatters here ([`duration`],
//! [`percent`], [`basis_points`], [`timestamp`]), so every command shows durations,
//! weights and times the same way.

use std::{
    collections::HashMap,
    fmt::{self, Write as _},
    io::{self, Write},
    time::{Duration, SystemTime},
};

use serde::Serialize;

/// How a command prints its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables and aligned fields for people.
    #[default]
    Table,
    /// JSON following the proto3 JSON mapping, pretty-printed.
    Json,
    /// YAML following the proto3 JSON mapping (the form spec files are written in).
    Yaml,
}

/// Writes `message` as JSON or YAML. Callers handle [`Format::Table`] themselves; here it
/// falls back to YAML, the more readable machine form.
pub fn machine<T: Serialize>(out: &mut dyn Write, format: Format, message: &T) -> io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, message).map_err(io::Error::other)?;
            writeln!(out)
        }
        Format::Table | Format::Yaml => {
            let text = serde_yaml_ng::to_string(message).map_err(io::Error::other)?;
            out.write_all(text.as_bytes())
        }
    }
}

/// Writes one item of a stream (`rollout watch -o json|yaml`): one JSON object per line, so
/// `jq` reads it as it comes; YAML documents separated by `---`.
pub fn machine_item<T: Serialize>(out: &mut dyn Write, format: Format, message: &T) -> io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer(&mut *out, message).map_err(io::Error::other)?;
            writeln!(out)
        }
        Format::Table | Format::Yaml => {
            writeln!(out, "---")?;
            machine(out, Format::Yaml, message)
        }
    }
}

/// A table with a header row, columns padded to their widest cell (by characters, so the
/// arrows and bars some cells hold do not skew it).
#[derive(Clone, Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<I, S>(header: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { header: header.into_iter().map(Into::into).collect(), rows: Vec::new() }
    }

    /// Appends a row; missing cells print empty, extra cells are kept.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.rows.iter().map(Vec::len).chain([self.header.len()]).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (index, width) in widths.iter().enumerate() {
                let cell = row.get(index).map(String::as_str).unwrap_or("");
                let _ = write!(line, "{cell}");
                if index + 1 < columns {
                    let pad = width - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            // Trailing padding of an empty last cell is noise in diffs of the expected files.
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Aligned `name: value` lines for one object's fields.
#[derive(Clone, Debug, Default)]
pub struct Fields {
    lines: Vec<(String, String)>,
}

impl Fields {
    /// No fields yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name: value`.
    pub fn field(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.lines.push((name.into(), value.into()));
        self
    }
}

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.lines.iter().map(|(name, _)| name.chars().count()).max().unwrap_or(0) + 1;
        for (name, value) in &self.lines {
            let label = format!("{name}:");
            writeln!(f, "{}", format!("{label:<width$} {value}").trim_end())?;
        }
        Ok(())
    }
}

/// A duration the way people write it, as the planner describes steps: `90s` → `1m30s`,
/// `24h`, `14d` (days from two days up, so a one-day window reads `24h`).
pub fn duration(value: Duration) -> String {
    const DAY: u64 = 24 * 3600;
    let secs = value.as_secs();
    let millis = value.subsec_millis();
    if secs == 0 && millis == 0 {
        return if value.is_zero() { "0s".to_owned() } else { format!("{}us", value.as_micros().max(1)) };
    }
    let (days, rest) = if secs >= 2 * DAY { (secs / DAY, secs % DAY) } else { (0, secs) };
    let parts = [(days, "d"), (rest / 3600, "h"), (rest % 3600 / 60, "m"), (rest % 60, "s"), (u64::from(millis), "ms")];
    parts.iter().filter(|(amount, _)| *amount > 0).map(|(amount, unit)| format!("{amount}{unit}")).collect()
}

/// A protobuf duration for people; negative or malformed ones (never sent by ficus) print
/// as they are in the JSON mapping.
pub fn proto_duration(value: &pbjson_types::Duration) -> String {
    match Duration::try_from(*value) {
        Ok(value) => duration(value),
        Err(_) => format!("{}s", value.seconds),
    }
}

/// A percentage without trailing zeros: `5%`, `20.5%`, `0.25%`.
pub fn percent(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    format!("{text}%")
}

/// Basis points as a percentage: `500` → `5%`.
pub fn basis_points(bp: u32) -> String {
    percent(f64::from(bp) / 100.0)
}

/// A weights map as `name=percent` pairs in the given order, then any other backend by
/// name, e.g. `legacy=95% k8s=5%`.
pub fn weights(weights: &HashMap<String, u32>, order: &[&str]) -> String {
    let mut names: Vec<&str> = order.iter().copied().filter(|name| weights.contains_key(*name)).collect();
    let mut rest: Vec<&str> = weights.keys().map(String::as_str).filter(|name| !order.contains(name)).collect();
    rest.sort_unstable();
    names.extend(rest);
    if names.is_empty() {
        return "-".to_owned();
    }
    let pairs: Vec<String> =
        names.iter().map(|name| format!("{name}={}", basis_points(weights.get(*name).copied().unwrap_or(0)))).collect();
    pairs.join(" ")
}

/// A timestamp in RFC 3339 to the second, in UTC (`2026-11-24T21:14:07Z`); `-` when unset.
pub fn timestamp(at: Option<&pbjson_types::Timestamp>) -> String {
    let Some(at) = at else { return "-".to_owned() };
    // The mapping's own encoder is the one place that formats protobuf timestamps; it writes
    // nanoseconds and `+00:00`, more than a person reading a table needs.
    match serde_json::to_value(at) {
        Ok(serde_json::Value::String(text)) => match text.find(['.', '+']) {
            Some(end) => format!("{}Z", &text[..end]),
            None => text,
        },
        _ => format!("{}s since 1970", at.seconds),
    }
}

/// How long ago `at` was, coarsely (`42s`, `5m`, `3h`, `2d`), as listings show age.
pub fn age(at: Option<&pbjson_types::Timestamp>, now: SystemTime) -> String {
    let Some(then) = at.and_then(ficus_proto::time::system_time) else { return "-".to_owned() };
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    match secs {
        0..120 => format!("{secs}s"),
        120..7_200 => format!("{}m", secs / 60),
        7_200..172_800 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// `yes` or `-`, for boolean columns that should stand out when set.
pub fn flag(value: bool) -> &'static str {
    if value { "yes" } else { "-" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_the_way_people_write_them() {
        for (secs, text) in [(0, "0s"), (90, "1m30s"), (3_600, "1h"), (86_400, "24h"), (14 * 86_400, "14d")] {
            assert_eq!(duration(Duration::from_secs(secs)), text);
        }
        assert_eq!(duration(Duration::from_millis(1_500)), "1s500ms");
    }

    #[test]
    fn percentages_drop_trailing_zeros() {
        assert_eq!(percent(5.0), "5%");
        assert_eq!(percent(20.5), "20.5%");
        assert_eq!(basis_points(25), "0.25%");
        assert_eq!(basis_points(10_000), "100%");
    }

    #[test]
    fn weights_list_the_given_order_first() {
        let map = HashMap::from([("k8s".to_owned(), 500), ("legacy".to_owned(), 9_500), ("extra".to_owned(), 0)]);
        assert_eq!(weights(&map, &["legacy", "k8s"]), "legacy=95% k8s=5% extra=0%");
    }

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let mut table = Table::new(["NAME", "WEIGHT"]);
        table.row(["checkout", "5%"]);
        table.row(["a", ""]);
        assert_eq!(table.to_string(), "NAME      WEIGHT\ncheckout  5%\na\n");
    }

    #[test]
    fn timestamps_read_to_the_second_in_utc() {
        let at = pbjson_types::Timestamp { seconds: 1_795_554_808, nanos: 648_000_000 };
        assert_eq!(timestamp(Some(&at)), "2026-11-24T21:13:28Z");
        assert_eq!(timestamp(None), "-");
    }

    #[test]
    fn json_output_follows_the_proto3_mapping() {
        let step = ficus_proto::planner::v1::PlannedStep { canary_weight: 5.0, analysis: true, ..Default::default() };
        let mut out = Vec::new();
        machine(&mut out, Format::Json, &step).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("\"canaryWeight\": 5.0"), "{text}");
    }
}
