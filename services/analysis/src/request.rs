//! Checking requests before anything runs: targets, templates, durations and run ids,
//! each refusal naming its field.

use std::time::Duration;

use ficus_kit::status::{InvalidField, positive_duration};
use ficus_proto::analysis::v1 as proto;

use crate::{
    error::Error,
    judge::{self, Template},
};

/// Window of `Analyze` when the request names none.
pub const DEFAULT_ANALYZE_WINDOW: Duration = Duration::from_secs(60);

/// Time between judgements of a run that names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Shortest interval: judging faster than traffic's 1 s statistics buckets adds nothing.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Longest caller-chosen run id.
const MAX_RUN_ID_LEN: usize = 128;

/// Longest warm-up a run may ignore: longer than any backend takes to warm, short enough
/// that a mistyped one is refused rather than leaving a stage unjudged for days.
pub const MAX_INITIAL_DELAY: Duration = Duration::from_secs(3600);

/// A run's validated definition.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// What is compared.
    pub target: proto::Target,
    /// The template as given (or the default), for the sources and the record.
    pub template_proto: proto::AnalysisTemplate,
    /// The validated template, for the judge.
    pub template: Template,
    /// Time between judgements.
    pub interval: Duration,
    /// How far back each judgement reads; everything since the start when unset.
    pub window: Option<Duration>,
    /// How long the run lasts; until stopped when unset.
    pub duration: Option<Duration>,
    /// What the run ignores after it starts; zero when none.
    pub initial_delay: Duration,
}

impl RunSpec {
    /// Validates a `StartRun` request.
    pub fn from_request(request: &proto::StartRunRequest) -> Result<Self, Error> {
        let target = target(request.target.as_ref(), "target")?;
        let (template_proto, template) = template(request.template.as_ref(), "template")?;
        let interval = positive(request.interval.as_ref(), "interval")?.unwrap_or(DEFAULT_INTERVAL);
        if interval < MIN_INTERVAL {
            return Err(InvalidField::new("interval", format!("must be at least {MIN_INTERVAL:?}")).into());
        }
        Ok(Self {
            target,
            template_proto,
            template,
            interval,
            window: positive(request.window.as_ref(), "window")?,
            duration: positive(request.duration.as_ref(), "duration")?,
            initial_delay: initial_delay(request.initial_delay.as_ref())?,
        })
    }

    /// Rebuilds the definition of a stored run, to resume it.
    pub fn from_run(run: &proto::Run) -> Result<Self, Error> {
        let started = run.started_at.as_ref().and_then(ficus_proto::time::system_time);
        let ends = run.ends_at.as_ref().and_then(ficus_proto::time::system_time);
        let duration = match (started, ends) {
            (Some(started), Some(ends)) => Some(ends.duration_since(started).unwrap_or_default()),
            _ => None,
        };
        Self::from_request(&proto::StartRunRequest {
            target: run.target.clone(),
            template: run.template.clone(),
            interval: run.interval,
            window: run.window,
            duration: duration.map(Into::into),
            run_id: run.id.clone(),
            initial_delay: run.initial_delay,
        })
    }
}

/// A target naming a route and two different backends.
pub fn target(target: Option<&proto::Target>, field: &str) -> Result<proto::Target, Error> {
    let target = target.ok_or_else(|| InvalidField::new(field, "required"))?;
    for (name, value) in [("route", &target.route), ("baseline", &target.baseline), ("canary", &target.canary)] {
        if value.is_empty() {
            return Err(InvalidField::new(format!("{field}.{name}"), "required").into());
        }
    }
    if target.baseline == target.canary {
        return Err(InvalidField::new(format!("{field}.canary"), "must differ from the baseline").into());
    }
    Ok(target.clone())
}

/// The template as given, or the default one, validated.
pub fn template(
    template: Option<&proto::AnalysisTemplate>,
    field: &str,
) -> Result<(proto::AnalysisTemplate, Template), Error> {
    let template = template.cloned().unwrap_or_else(judge::default_template);
    let validated = Template::from_proto(&template, field)?;
    Ok((template, validated))
}

/// An optional duration that, when set, is well formed, positive and at most
/// [`MAX_DURATION`](ficus_kit::status::MAX_DURATION).
pub fn positive(duration: Option<&pbjson_types::Duration>, field: &str) -> Result<Option<Duration>, Error> {
    Ok(positive_duration(duration, field)?)
}

/// The warm-up of a run: positive and at most [`MAX_INITIAL_DELAY`] when set, so that
/// adding it to the start can neither overflow nor hold a run silent for days.
fn initial_delay(delay: Option<&pbjson_types::Duration>) -> Result<Duration, Error> {
    let delay = positive(delay, "initial_delay")?.unwrap_or_default();
    if delay > MAX_INITIAL_DELAY {
        return Err(InvalidField::new("initial_delay", format!("must be at most {MAX_INITIAL_DELAY:?}")).into());
    }
    Ok(delay)
}

/// A caller-chosen run id: URL-safe, so it can appear in keys and paths.
pub fn run_id(id: &str) -> Result<String, Error> {
    let valid = id.len() <= MAX_RUN_ID_LEN && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(id.to_owned())
    } else {
        Err(InvalidField::new("run_id", "up to 128 letters, digits, '-', '_' or '.'").into())
    }
}
