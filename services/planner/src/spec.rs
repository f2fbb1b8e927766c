//! Validation of a rollout spec: [`Spec::from_proto`] turns a `RolloutSpec` into typed Rust
//! values (weights in basis points, `std::time::Duration`s, enums, defaults filled in) or
//! refuses it with the path of the first offending field, so the plan and the state machine
//! never see an unchecked spec.
//!
//! # Field paths
//! Paths are the proto field names in snake_case joined by `.`, with `[i]` for list items,
//! prefixed by the caller's path of the spec (e.g. `spec`). A `oneof` adds no segment of its
//! own: the chosen member's name stands directly under its message, exactly as in the
//! proto3 JSON / YAML a user writes (`canary: {steps: [{setWeight: 20}]}`) and as
//! `google.rpc.BadRequest` expects field paths to name real fields. So:
//! - `spec.canary.steps[2].set_weight`, `spec.canary.steps[1].pause.duration`,
//!   `spec.canary.steps[3].analysis.window`;
//! - `spec.strangler.stages[1].weight`, `spec.strangler.window`;
//! - `spec.blue_green.retention`;
//! - `spec.scaling.max_surge`, `spec.failure_policy`, `spec.analysis.stage_templates[0].up_to_weight`.
//!
//! A spec without a strategy, or a canary step without its kind, is reported on the message
//! that lacks the choice (`spec`, `spec.canary.steps[0]`), as there is no field to name.

use std::time::Duration;

pub use ficus_kit::status::InvalidField;
use ficus_kit::status::{check_name, positive_duration as positive};
use ficus_proto::{analysis::v1::AnalysisTemplate, planner::v1 as proto};

pub use ficus_proto::planner::v1::{DeadlineAction, FailurePolicy};

use crate::replicas::{Scaling, ScalingError};

/// A weight of 100%, in basis points: weights are hundredths of a percent.
pub const FULL_WEIGHT: u32 = 10_000;

/// Strangler stages when the spec gives none: the seed's 5/20/50/80/100, in basis points.
pub const DEFAULT_STAGES: [u32; 5] = [500, 2_000, 5_000, 8_000, FULL_WEIGHT];

/// Observation window of a strangler stage that sets none: a whole day covers the daily peak
/// and trough, which is the point of observing in production.
pub const DEFAULT_STAGE_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// How long blue-green keeps the old side by default: the seed's two-week minimum.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// Longest blue-green retention: the seed's three-month maximum (90 days), past which the old
/// environment has drifted too far for a switch back to be safe.
pub const MAX_RETENTION: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// Time between analysis judgements when the spec sets none.
pub const DEFAULT_ANALYSIS_INTERVAL: Duration = Duration::from_secs(5);

/// Longest warm-up a step's analysis may ignore (the analysis service's own limit).
pub const MAX_INITIAL_DELAY: Duration = Duration::from_secs(60 * 60);

/// A validated rollout spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// Traffic route whose weights the rollout moves.
    pub route: String,
    /// Backend that has the traffic now.
    pub stable_backend: String,
    /// Backend that takes the traffic over.
    pub canary_backend: String,
    /// A fresh copy of the stable release that gets the canary's share and is its
    /// baseline; `None` judges the canary against the stable backend.
    pub baseline_backend: Option<String>,
    /// How the weight moves, with defaults filled in.
    pub strategy: Strategy,
    /// Analysis run during observed steps; `None` runs none.
    pub analysis: Option<Analysis>,
    /// What a failed analysis does.
    pub failure_policy: FailurePolicy,
    /// Wait for Promote before the final switch to 100%.
    pub manual_gate: bool,
    /// Replica arithmetic, when the rollout also scales.
    pub scaling: Option<Scaling>,
    /// How long a step may be late or unjudged, and what happens then.
    pub deadlines: Deadlines,
}

/// How long a step may take before the rollout acts on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// How long a step may run past its own duration; no deadline when `None`.
    pub progress: Option<Duration>,
    /// How long an analysed step may go without a conclusive verdict; none when `None`.
    pub inconclusive: Option<Duration>,
    /// What a missed deadline does.
    pub action: DeadlineAction,
}

/// How the weight moves.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// Explicit steps, as written; the plan adds the final switch when they stop short of 100%.
    Canary(Vec<CanaryStep>),
    /// Stages with observation windows: weights strictly rising, the last always 100%
    /// (validation appends a 100% stage with the strategy's window when the spec stops short).
    Strangler(Vec<Stage>),
    /// Preview at 0%, then one atomic switch, then retention.
    BlueGreen(BlueGreen),
}

/// One validated canary step.
#[derive(Clone, Debug, PartialEq)]
pub enum CanaryStep {
    /// Set the canary's weight, in basis points; never below an earlier one.
    SetWeight(u32),
    /// Wait this long, or until promoted when `None`.
    Pause(Option<Duration>),
    /// Observe with analysis at the current weight.
    Analysis {
        /// How long to observe; always positive.
        window: Duration,
        /// Checks for this step; the rollout's template when `None`.
        template: Option<AnalysisTemplate>,
        /// The step's own progress deadline, replacing the rollout's.
        progress_deadline: Option<Duration>,
    },
}

/// One strangler stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage {
    /// The new environment's share, in basis points.
    pub weight: u32,
    /// How long the stage is observed.
    pub window: Duration,
    /// The stage's own progress deadline, replacing the rollout's.
    pub progress_deadline: Option<Duration>,
}

/// Blue-green settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlueGreen {
    /// How long preview checks run at 0%; no preview step when `None`.
    pub preview_window: Option<Duration>,
    /// How long the old side is kept after the switch; at most [`MAX_RETENTION`].
    pub retention: Duration,
}

/// Validated analysis settings; the templates themselves are checked by the analysis service.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// The checks; the analysis service's default template when `None`.
    pub template: Option<AnalysisTemplate>,
    /// Time between judgements.
    pub interval: Duration,
    /// What each step's analysis ignores after the weight moves; none when `None`.
    pub initial_delay: Option<Duration>,
    /// Templates by weight, `up_to` strictly rising.
    pub stage_templates: Vec<StageTemplate>,
}

/// A template used for steps up to a weight.
#[derive(Clone, Debug, PartialEq)]
pub struct StageTemplate {
    /// Applies to steps whose weight is at most this, in basis points.
    pub up_to: u32,
    /// The checks.
    pub template: AnalysisTemplate,
}

impl Analysis {
    /// The template that judges a step at `weight` basis points: the first stage template
    /// whose `up_to` covers the weight, else the rollout's template (`None`: the analysis
    /// service's default).
    pub fn template_for(&self, weight: u32) -> Option<&AnalysisTemplate> {
        self.stage_templates
            .iter()
            .find(|stage| weight <= stage.up_to)
            .map(|stage| &stage.template)
            .or(self.template.as_ref())
    }
}

/// Basis points for a percentage with at most two decimals, `None` when outside [0, 100],
/// not finite, or finer than 0.01%.
pub fn basis_points(percent: f64) -> Option<u32> {
    if !(0.0..=100.0).contains(&percent) {
        return None;
    }
    let scaled = (percent * 100.0).round();
    // `scaled / 100.0` is the double nearest to the two-decimal value, which is exactly what
    // a JSON or YAML `20.5` parses to; anything else had a third decimal. The range check
    // above bounds `scaled` to 0..=10000, so the cast is exact.
    let bp = scaled as u32;
    (scaled / 100.0 == percent).then_some(bp)
}

/// A weight in basis points as the percentage the API shows.
pub fn percent(weight: u32) -> f64 {
    f64::from(weight) / 100.0
}

impl Spec {
    /// Validates `spec`; `field` is the spec's path in the request (e.g. `spec`), prefixed to
    /// every reported field path.
    pub fn from_proto(spec: &proto::RolloutSpec, field: &str) -> Result<Self, InvalidField> {
        check_name(&format!("{field}.route"), &spec.route)?;
        check_name(&format!("{field}.stable_backend"), &spec.stable_backend)?;
        check_name(&format!("{field}.canary_backend"), &spec.canary_backend)?;
        if spec.stable_backend == spec.canary_backend {
            return Err(InvalidField::new(
                format!("{field}.canary_backend"),
                format!(
                    "`{}` is also the stable backend; a rollout moves traffic between two backends",
                    spec.canary_backend
                ),
            ));
        }
        let baseline_backend = equal_footing(spec, field)?;
        let strategy = match &spec.strategy {
            Some(proto::rollout_spec::Strategy::Canary(canary)) => canary_steps(canary, &format!("{field}.canary"))?,
            Some(proto::rollout_spec::Strategy::Strangler(strangler)) => {
                strangler_stages(strangler, &format!("{field}.strangler"))?
            }
            Some(proto::rollout_spec::Strategy::BlueGreen(blue_green)) => {
                Strategy::BlueGreen(blue_green_settings(blue_green, &format!("{field}.blue_green"))?)
            }
            None => return Err(InvalidField::new(field, "set one strategy: `canary`, `strangler` or `blue_green`")),
        };
        let analysis = spec
            .analysis
            .as_ref()
            .map(|analysis| analysis_settings(analysis, &format!("{field}.analysis")))
            .transpose()?;
        let failure_policy = FailurePolicy::try_from(spec.failure_policy).map_err(|_| {
            InvalidField::new(
                format!("{field}.failure_policy"),
                format!(
                    "unknown value {}; use ROLLBACK_TO_PREVIOUS_STAGE, ABORT_TO_ZERO or PAUSE_FOR_HUMAN",
                    spec.failure_policy
                ),
            )
        })?;
        let scaling =
            spec.scaling.as_ref().map(|scaling| scaling_budget(scaling, &format!("{field}.scaling"))).transpose()?;
        let deadlines = deadlines(spec, field)?;
        Ok(Self {
            route: spec.route.clone(),
            stable_backend: spec.stable_backend.clone(),
            canary_backend: spec.canary_backend.clone(),
            baseline_backend,
            strategy,
            analysis,
            failure_policy,
            manual_gate: spec.manual_gate,
            scaling,
            deadlines,
        })
    }
}

fn deadlines(spec: &proto::RolloutSpec, field: &str) -> Result<Deadlines, InvalidField> {
    let progress = positive(spec.progress_deadline.as_ref(), &format!("{field}.progress_deadline"))?;
    let inconclusive = positive(spec.inconclusive_deadline.as_ref(), &format!("{field}.inconclusive_deadline"))?;
    let action = DeadlineAction::try_from(spec.deadline_action).map_err(|_| {
        InvalidField::new(
            format!("{field}.deadline_action"),
            format!(
                "unknown value {}; use DEADLINE_ACTION_PAUSE, DEADLINE_ACTION_ABORT or DEADLINE_ACTION_ROLL_BACK",
                spec.deadline_action
            ),
        )
    })?;
    if inconclusive.is_some() && spec.analysis.is_none() {
        return Err(InvalidField::new(
            format!("{field}.inconclusive_deadline"),
            "the rollout has no analysis, so no step can be inconclusive",
        ));
    }
    Ok(Deadlines { progress, inconclusive, action })
}

/// The spec's `baseline_backend`: a name of its own, and not with blue-green, which has no
/// canary share to give it.
fn equal_footing(spec: &proto::RolloutSpec, field: &str) -> Result<Option<String>, InvalidField> {
    let baseline = &spec.baseline_backend;
    if baseline.is_empty() {
        return Ok(None);
    }
    let path = format!("{field}.baseline_backend");
    check_name(&path, baseline)?;
    if *baseline == spec.stable_backend || *baseline == spec.canary_backend {
        return Err(InvalidField::new(
            path,
            format!(
                "`{baseline}` is already a side of the rollout; the baseline is a third backend, \
                 a fresh copy of the stable release"
            ),
        ));
    }
    if matches!(spec.strategy, Some(proto::rollout_spec::Strategy::BlueGreen(_))) {
        return Err(InvalidField::new(
            path,
            "blue-green previews at 0% and switches at once: there is no canary share for a baseline to match",
        ));
    }
    Ok(Some(baseline.clone()))
}

fn canary_steps(canary: &proto::CanaryStrategy, field: &str) -> Result<Strategy, InvalidField> {
    use proto::canary_step::Step;
    if canary.steps.is_empty() {
        return Err(InvalidField::new(format!("{field}.steps"), "a canary needs at least one step"));
    }
    let mut current = 0;
    let mut steps = Vec::with_capacity(canary.steps.len());
    for (i, step) in canary.steps.iter().enumerate() {
        let path = format!("{field}.steps[{i}]");
        let step = match &step.step {
            Some(Step::SetWeight(value)) => {
                let weight = weight(*value, &format!("{path}.set_weight"))?;
                if weight < current {
                    return Err(InvalidField::new(
                        format!("{path}.set_weight"),
                        format!("weights rising: {value} is below the earlier {}", percent(current)),
                    ));
                }
                current = weight;
                CanaryStep::SetWeight(weight)
            }
            Some(Step::Pause(pause)) => {
                CanaryStep::Pause(positive(pause.duration.as_ref(), &format!("{path}.pause.duration"))?)
            }
            Some(Step::Analysis(analysis)) => {
                let window_field = format!("{path}.analysis.window");
                // A window is required: an analysis step of unknown length could not be planned.
                let window = positive(analysis.window.as_ref(), &window_field)?
                    .ok_or_else(|| InvalidField::new(window_field, "an analysis step needs a window"))?;
                let progress_deadline =
                    positive(analysis.progress_deadline.as_ref(), &format!("{path}.analysis.progress_deadline"))?;
                CanaryStep::Analysis { window, template: analysis.template.clone(), progress_deadline }
            }
            None => return Err(InvalidField::new(path, "set one of `set_weight`, `pause` or `analysis`")),
        };
        steps.push(step);
    }
    Ok(Strategy::Canary(steps))
}

fn strangler_stages(strangler: &proto::StranglerStrategy, field: &str) -> Result<Strategy, InvalidField> {
    let default_window =
        positive(strangler.window.as_ref(), &format!("{field}.window"))?.unwrap_or(DEFAULT_STAGE_WINDOW);
    if strangler.stages.is_empty() {
        let stages = DEFAULT_STAGES
            .iter()
            .map(|&weight| Stage { weight, window: default_window, progress_deadline: None })
            .collect();
        return Ok(Strategy::Strangler(stages));
    }
    let mut stages: Vec<Stage> = Vec::with_capacity(strangler.stages.len() + 1);
    for (i, stage) in strangler.stages.iter().enumerate() {
        let path = format!("{field}.stages[{i}]");
        let weight = weight(stage.weight, &format!("{path}.weight"))?;
        if weight == 0 {
            return Err(InvalidField::new(format!("{path}.weight"), "a stage moves some traffic: above 0"));
        }
        if let Some(previous) = stages.last().filter(|previous| weight <= previous.weight) {
            return Err(InvalidField::new(
                format!("{path}.weight"),
                format!(
                    "stages strictly rising: {} is not above the earlier {}",
                    stage.weight,
                    percent(previous.weight)
                ),
            ));
        }
        let window = positive(stage.window.as_ref(), &format!("{path}.window"))?.unwrap_or(default_window);
        let progress_deadline = positive(stage.progress_deadline.as_ref(), &format!("{path}.progress_deadline"))?;
        stages.push(Stage { weight, window, progress_deadline });
    }
    // A migration ends with everything on the new side, observed like every other stage.
    if stages.last().is_some_and(|last| last.weight < FULL_WEIGHT) {
        stages.push(Stage { weight: FULL_WEIGHT, window: default_window, progress_deadline: None });
    }
    Ok(Strategy::Strangler(stages))
}

fn blue_green_settings(blue_green: &proto::BlueGreenStrategy, field: &str) -> Result<BlueGreen, InvalidField> {
    let preview_window = positive(blue_green.preview_window.as_ref(), &format!("{field}.preview_window"))?;
    let retention_field = format!("{field}.retention");
    let retention = positive(blue_green.retention.as_ref(), &retention_field)?.unwrap_or(DEFAULT_RETENTION);
    if retention > MAX_RETENTION {
        return Err(InvalidField::new(
            retention_field,
            "at most 90 days: an older environment is no safe switch-back target",
        ));
    }
    Ok(BlueGreen { preview_window, retention })
}

fn analysis_settings(analysis: &proto::AnalysisSpec, field: &str) -> Result<Analysis, InvalidField> {
    let interval =
        positive(analysis.interval.as_ref(), &format!("{field}.interval"))?.unwrap_or(DEFAULT_ANALYSIS_INTERVAL);
    let delay_field = format!("{field}.initial_delay");
    let initial_delay = positive(analysis.initial_delay.as_ref(), &delay_field)?;
    if initial_delay.is_some_and(|delay| delay > MAX_INITIAL_DELAY) {
        return Err(InvalidField::new(delay_field, "at most 1 hour: a longer warm-up leaves the step unjudged"));
    }
    let mut stage_templates: Vec<StageTemplate> = Vec::with_capacity(analysis.stage_templates.len());
    for (i, stage) in analysis.stage_templates.iter().enumerate() {
        let path = format!("{field}.stage_templates[{i}]");
        let up_to = weight(stage.up_to_weight, &format!("{path}.up_to_weight"))?;
        if up_to == 0 {
            return Err(InvalidField::new(format!("{path}.up_to_weight"), "above 0"));
        }
        if let Some(previous) = stage_templates.last().filter(|previous| up_to <= previous.up_to) {
            return Err(InvalidField::new(
                format!("{path}.up_to_weight"),
                format!("strictly rising: {} is not above the earlier {}", stage.up_to_weight, percent(previous.up_to)),
            ));
        }
        let template = stage
            .template
            .clone()
            .ok_or_else(|| InvalidField::new(format!("{path}.template"), "a stage template needs its template"))?;
        stage_templates.push(StageTemplate { up_to, template });
    }
    Ok(Analysis { template: analysis.template.clone(), interval, initial_delay, stage_templates })
}

fn scaling_budget(scaling: &proto::Scaling, field: &str) -> Result<Scaling, InvalidField> {
    if let Some(deployments) = &scaling.deployments {
        let path = format!("{field}.deployments");
        check_name(&format!("{path}.namespace"), &deployments.namespace)?;
        check_name(&format!("{path}.stable"), &deployments.stable)?;
        check_name(&format!("{path}.canary"), &deployments.canary)?;
        if deployments.stable == deployments.canary {
            return Err(InvalidField::new(format!("{path}.canary"), "must differ from the stable Deployment"));
        }
    }
    Scaling::new(scaling.replicas, &scaling.max_surge, &scaling.max_unavailable).map_err(|error| match error {
        ScalingError::NoReplicas => InvalidField::new(format!("{field}.replicas"), "at least 1 replica"),
        ScalingError::MaxSurge(error) => InvalidField::new(format!("{field}.max_surge"), error.to_string()),
        ScalingError::MaxUnavailable(error) => InvalidField::new(format!("{field}.max_unavailable"), error.to_string()),
        // Reported on max_unavailable, as Kubernetes does ("may not be 0 when maxSurge is 0").
        both @ ScalingError::BothZero { .. } => InvalidField::new(format!("{field}.max_unavailable"), both.to_string()),
    })
}

/// A percentage field as basis points.
fn weight(percent: f64, field: &str) -> Result<u32, InvalidField> {
    basis_points(percent).ok_or_else(|| {
        InvalidField::new(field, format!("{percent} must be a percentage from 0 to 100 with at most two decimals"))
    })
}

#[cfg(test)]
mod tests;
