//! Reading a rollout spec file: YAML or JSON (JSON is YAML) decoded into `RolloutSpec`
//! (or another API message, such as a `Route`) through the proto3 JSON mapping, with every
//! error pointing at `file:line:column`.
//!
//! The mapping writes durations as seconds (`86400s`), which nobody reads comfortably, so
//! duration fields (`window`, `interval`, `duration`, `retention`, `previewWindow`,
//! `step`, `initialDelay`) also take the units people write: `24h`, `30m`, `14d`, `1h30m`, `500ms`. They
//! are rewritten to the mapping's form in the text itself, before decoding, rather than in
//! a decoded tree, because only decoding from text keeps the line and column of every
//! error; columns on a rewritten line are mapped back to the file as written.
//!
//! ```
//! let spec = ficus::spec_file::parse("route: checkout\nstrangler: {window: 24h}\n", "spec.yaml")
//!     .expect("a valid spec");
//! let strangler = match spec.strategy {
//!     Some(ficus_proto::planner::v1::rollout_spec::Strategy::Strangler(strangler)) => strangler,
//!     _ => unreachable!(),
//! };
//! assert_eq!(strangler.window.map(|window| window.seconds), Some(86_400));
//!
//! let error = ficus::spec_file::parse("route: checkout\nstrangler: {window: [}\n", "spec.yaml")
//!     .expect_err("broken YAML");
//! assert!(error.to_string().starts_with("spec.yaml:2:"), "{error}");
//! ```

use std::{fmt, io::Read, path::Path};

use ficus_proto::{
    planner::v1::RolloutSpec,
    time::{DURATION_KEYS, is_proto_duration, proto_duration},
};
use serde::de::DeserializeOwned;

/// Why a spec file could not be read, with where in the file when that is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line and column of the problem, when the decoder knows it.
    pub location: Option<(usize, usize)>,
    /// What is wrong, without the location.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for SpecError {}

/// Reads the spec in `path`; `-` reads standard input, so a spec can be piped in.
pub fn read(path: &Path) -> Result<RolloutSpec, SpecError> {
    read_as(path)
}

/// Reads any API message from `path` (e.g. a `Route` for `route apply`) the same way.
pub fn read_as<T: DeserializeOwned>(path: &Path) -> Result<T, SpecError> {
    let name = path.display().to_string();
    let text = if name == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    let text = text.map_err(|error| SpecError { file: name.clone(), location: None, message: error.to_string() })?;
    parse_as(&text, &name)
}

/// Decodes `text`, the contents of the file `name` (used in errors).
pub fn parse(text: &str, name: &str) -> Result<RolloutSpec, SpecError> {
    parse_as(text, name)
}

/// Decodes `text` as any API message.
pub fn parse_as<T: DeserializeOwned>(text: &str, name: &str) -> Result<T, SpecError> {
    let rewritten = Rewritten::new(text);
    serde_yaml_ng::from_str(&rewritten.text).map_err(|error| {
        let location = error.location().map(|at| rewritten.original(at.line(), at.column()));
        let mut message = error.to_string();
        if let Some(at) = error.location() {
            // The location is reported once, in front, and in the file's own columns.
            message = message.replacen(&format!(" at line {} column {}", at.line(), at.column()), "", 1);
        }
        // The mapping's duration decoder only knows its own form; say what is accepted here.
        message = message.replace("missing 's' suffix", "expected a duration such as `90s`, `5m`, `24h` or `14d`");
        SpecError { file: name.to_owned(), location, message }
    })
}

/// `text` with human durations in the mapping's form, and how to map columns back.
struct Rewritten {
    text: String,
    /// Per edited line (0-based): the edits, left to right.
    edits: Vec<(usize, Vec<Edit>)>,
}

/// One replaced value, in character columns (0-based) of the rewritten line.
#[derive(Clone, Copy, Debug)]
struct Edit {
    start: usize,
    old_len: usize,
    new_len: usize,
}

impl Rewritten {
    fn new(text: &str) -> Self {
        let mut out = String::with_capacity(text.len());
        let mut edits = Vec::new();
        for (number, line) in text.split_inclusive('\n').enumerate() {
            let (line, line_edits) = rewrite_line(line);
            out.push_str(&line);
            if !line_edits.is_empty() {
                edits.push((number, line_edits));
            }
        }
        Self { text: out, edits }
    }

    /// The 1-based line and column in the original text of a position in the rewritten one.
    fn original(&self, line: usize, column: usize) -> (usize, usize) {
        let Some((_, edits)) = self.edits.iter().find(|(number, _)| number + 1 == line) else {
            return (line, column);
        };
        let mut shift = 0_isize;
        let zero_based = column.saturating_sub(1);
        for edit in edits {
            if zero_based >= edit.start + edit.new_len {
                shift += edit.new_len as isize - edit.old_len as isize;
            } else if zero_based > edit.start {
                // Inside a replaced value: point at the value as written.
                return (line, edit.start.saturating_add_signed(-shift) + 1);
            }
        }
        (line, zero_based.saturating_add_signed(-shift) + 1)
    }
}

/// Rewrites the duration values of one line, returning it and the edits made.
fn rewrite_line(line: &str) -> (String, Vec<Edit>) {
    let mut replacements: Vec<(usize, usize, String)> = Vec::new();
    for key in DURATION_KEYS {
        for (at, _) in line.match_indices(key) {
            if let Some(found) = duration_value(line, at, key) {
                replacements.push(found);
            }
        }
    }
    if replacements.is_empty() {
        return (line.to_owned(), Vec::new());
    }
    replacements.sort_by_key(|(start, _, _)| *start);
    let mut out = String::with_capacity(line.len() + 16);
    let mut edits = Vec::new();
    let mut copied = 0;
    for (start, end, proto) in replacements {
        if start < copied {
            continue;
        }
        out.push_str(&line[copied..start]);
        edits.push(Edit {
            start: out.chars().count(),
            old_len: line[start..end].chars().count(),
            new_len: proto.chars().count(),
        });
        out.push_str(&proto);
        copied = end;
    }
    out.push_str(&line[copied..]);
    (out, edits)
}

/// If `key` at byte `at` of `line` is a mapping key with a human duration for its value,
/// the byte range of the value (inside any quotes) and its proto3 JSON form.
fn duration_value(line: &str, at: usize, key: &str) -> Option<(usize, usize, String)> {
    let before = line[..at].chars().next_back();
    if !before.is_none_or(|c| c.is_whitespace() || matches!(c, '{' | ',' | '"' | '\'')) {
        return None;
    }
    let mut rest = &line[at + key.len()..];
    rest = rest.strip_prefix(['"', '\'']).unwrap_or(rest);
    rest = rest.trim_start_matches([' ', '\t']).strip_prefix(':')?;
    let after_colon = rest.trim_start_matches([' ', '\t']);
    let value_start = line.len() - after_colon.len();
    let (value, start) = match after_colon.chars().next() {
        Some(quote @ ('"' | '\'')) => {
            let inner = &after_colon[1..];
            (&inner[..inner.find(quote)?], value_start + 1)
        }
        _ => {
            let end = after_colon.find([',', '}', ']', '#', '\n', '\r']).unwrap_or(after_colon.len());
            (after_colon[..end].trim_end(), value_start)
        }
    };
    if value.is_empty() || is_proto_duration(value) {
        return None;
    }
    let parsed = humantime::parse_duration(value).ok()?;
    Some((start, start + value.len(), proto_duration(parsed)))
}

#[cfg(test)]
mod tests {
    use ficus_proto::planner::v1::{FailurePolicy, rollout_spec::Strategy};

    use super::*;

    #[test]
    fn a_yaml_spec_decodes_through_the_proto3_mapping() {
        let spec = parse(
            "route: checkout\nstableBackend: legacy\ncanaryBackend: k8s\nstrangler:\n  window: 86400s\nfailurePolicy: ABORT_TO_ZERO\nmanualGate: true\n",
            "spec.yaml",
        )
        .expect("valid");
        assert_eq!(spec.route, "checkout");
        assert_eq!(spec.failure_policy(), FailurePolicy::AbortToZero);
        assert!(spec.manual_gate);
        assert!(matches!(spec.strategy, Some(Strategy::Strangler(s)) if s.window.map(|w| w.seconds) == Some(86_400)));
    }

    #[test]
    fn human_durations_are_accepted_in_duration_fields_only() {
        let spec = parse(
            "route: 24h\nstrangler:\n  stages: [{weight: 5, window: 30m}, {weight: 100, \"window\": \"1h30m\"}]\n  window: 2d # two days\nanalysis: {interval: 500ms, initialDelay: 5s}\n",
            "spec.yaml",
        )
        .expect("valid");
        assert_eq!(spec.route, "24h", "a route named like a duration stays as written");
        let Some(Strategy::Strangler(strangler)) = spec.strategy else { panic!("strangler") };
        let windows: Vec<i64> = strangler.stages.iter().filter_map(|stage| stage.window.map(|w| w.seconds)).collect();
        assert_eq!(windows, [1_800, 5_400]);
        assert_eq!(strangler.window.map(|w| w.seconds), Some(2 * 86_400));
        let interval = spec.analysis.as_ref().and_then(|analysis| analysis.interval).expect("interval");
        assert_eq!((interval.seconds, interval.nanos), (0, 500_000_000));
        let warm_up = spec.analysis.and_then(|analysis| analysis.initial_delay).expect("initial delay");
        assert_eq!(warm_up.seconds, 5);
    }

    #[test]
    fn a_syntax_error_names_file_line_and_column() {
        let error = parse("route: checkout\nstrangler:\n  stages: [{weight: 5}\n", "spec.yaml").expect_err("broken");
        assert_eq!(error.file, "spec.yaml");
        assert!(error.location.is_some_and(|(line, _)| line >= 3), "{error:?}");
        assert!(error.to_string().starts_with("spec.yaml:"), "{error}");
        let (line, column) = error.location.unwrap_or_default();
        assert!(!error.message.contains(&format!("line {line} column {column}")), "said once: {error}");
    }

    #[test]
    fn a_type_error_names_the_field_and_its_position() {
        let error = parse("route: checkout\nstrangler:\n  stages:\n    - weight: lots\n", "s.yaml").expect_err("bad");
        // The mapping's decoder reports a bad value at the object that holds it.
        assert_eq!(error.location, Some((4, 7)), "{error}");
        assert!(error.message.starts_with("strangler.stages[0]: "), "{error}");
    }

    #[test]
    fn columns_after_a_rewritten_duration_are_those_of_the_file() {
        // `24h` becomes `86400s` (three characters longer) before the misspelt field.
        let error = parse("strangler: {window: 24h, stagez: []}\n", "s.yaml").expect_err("bad");
        assert_eq!(error.location, Some((1, 26)), "{error}");
    }

    #[test]
    fn a_malformed_duration_says_what_a_duration_looks_like() {
        let error = parse("strangler:\n  window: soon\n", "s.yaml").expect_err("bad");
        assert_eq!(
            error.to_string(),
            "s.yaml:2:11: strangler.window: expected a duration such as `90s`, `5m`, `24h` or `14d`"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = parse("route: checkout\nstableBackends: legacy\n", "s.yaml").expect_err("typo");
        assert_eq!(error.location.map(|(line, _)| line), Some(2), "{error}");
        assert!(error.message.contains("stableBackends"), "{error}");
    }

    #[test]
    fn the_examples_decode() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for name in ["strangler", "canary", "blue-green"] {
            let spec = read(&examples.join(format!("{name}.yaml"))).unwrap_or_else(|error| panic!("{error}"));
            assert_eq!((spec.route.as_str(), spec.stable_backend.as_str()), ("checkout", "legacy"), "{name}");
        }
    }

    #[test]
    fn a_missing_file_is_reported_without_a_location() {
        let error = read(Path::new("/nonexistent/spec.yaml")).expect_err("missing");
        assert_eq!(error.location, None);
        assert!(error.to_string().starts_with("/nonexistent/spec.yaml: "), "{error}");
    }
}
