//! The plan: the ordered steps a validated [`Spec`] turns into, which the state machine
//! executes one by one and `PreviewPlan` shows.
//!
//! Every strategy becomes the same few step kinds ([`StepKind`]), each carrying the canary
//! weight in force during the step and the weights map sent to traffic, so the state machine
//! never looks at the strategy again:
//! - strangler: for each stage, set the weight, then observe for the stage's window (with
//!   analysis when the spec has analysis);
//! - canary: the steps as written; an `analysis` step observes at the current weight with
//!   analysis;
//! - blue-green: observe at 0% for the preview window (preview checks, analysed when the spec
//!   has analysis), one atomic switch to 100%, then keep the old side for the retention (an
//!   instant switch back stays possible).
//!
//! With `manual_gate`, a [`StepKind::Gate`] waits for Promote right before the switch to
//! 100%. Every plan ends at 100%: a canary that stops short gets a final `SetWeight(100%)`.
//!
//! ```
//! use ficus_planner::{plan::Plan, spec::Spec};
//! use ficus_proto::planner::v1 as proto;
//!
//! let spec = proto::RolloutSpec {
//!     route: "checkout".into(),
//!     stable_backend: "legacy".into(),
//!     canary_backend: "k8s".into(),
//!     strategy: Some(proto::rollout_spec::Strategy::Strangler(Default::default())),
//!     ..Default::default()
//! };
//! let plan = Plan::new(&Spec::from_proto(&spec, "spec").expect("valid spec"));
//! assert_eq!(plan.steps()[0].description(), "set canary weight to 5%");
//! assert_eq!(plan.minimum_duration().as_secs(), 5 * 24 * 3600);
//! ```

use std::{collections::HashMap, fmt, time::Duration};

use ficus_proto::{analysis::v1::AnalysisTemplate, planner::v1 as proto};

use crate::{
    replicas::ReplicaPlan,
    spec::{self, CanaryStep, FULL_WEIGHT, Spec, Strategy},
};

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// Send the weights to traffic; takes no time of its own.
    SetWeight {
        /// The canary's new weight, in basis points.
        bp: u32,
    },
    /// Hold the weight for a window, judged by analysis when `analysis`.
    Observe {
        /// How long.
        window: Duration,
        /// Whether analysis judges the window.
        analysis: bool,
    },
    /// Wait for `duration`, or until promoted when `None`.
    Pause {
        /// How long; `None` waits for Promote.
        duration: Option<Duration>,
    },
    /// Wait for Promote (the spec's `manual_gate`).
    Gate,
    /// Blue-green: keep the old side running so a switch back is instant.
    Retain {
        /// How long the old side is kept.
        duration: Duration,
    },
}

/// One planned step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// What the step does.
    pub kind: StepKind,
    /// The canary's weight in force during the step, in basis points.
    pub weight: u32,
    /// The weights sent to traffic: `{stable: 10000 − weight, canary: weight}`, with an
    /// equal-footing baseline's share taken from the stable side's.
    pub weights: HashMap<String, u32>,
    /// Checks for an analysed step: the canary step's own template, else the stage template
    /// for the weight, else the rollout's; `None` for an analysed step means the analysis
    /// service's default template, and always `None` when the step runs no analysis.
    pub template: Option<AnalysisTemplate>,
    /// Pod counts, when the spec has scaling.
    pub replicas: Option<ReplicaPlan>,
    /// How long the step may run past its duration before the spec's deadline action:
    /// the step's own deadline, else the rollout's; `None` for none.
    pub progress_deadline: Option<Duration>,
}

impl Step {
    /// How long the step lasts: zero for a weight change, `None` when it waits for a human.
    pub fn duration(&self) -> Option<Duration> {
        match self.kind {
            StepKind::SetWeight { .. } => Some(Duration::ZERO),
            StepKind::Observe { window, .. } => Some(window),
            StepKind::Pause { duration } => duration,
            StepKind::Gate => None,
            StepKind::Retain { duration } => Some(duration),
        }
    }

    /// Whether analysis judges this step.
    pub fn analysis(&self) -> bool {
        matches!(self.kind, StepKind::Observe { analysis: true, .. })
    }

    /// Whether the step waits for Promote: a gate, or a pause without a duration (both end
    /// only when a human says so, which is what the API's `gate` flag tells a reader).
    pub fn waits_for_promotion(&self) -> bool {
        matches!(self.kind, StepKind::Gate | StepKind::Pause { duration: None })
    }

    /// One line: what happens, e.g. `set canary weight to 20%`, `observe 24h with analysis`.
    pub fn description(&self) -> String {
        match self.kind {
            StepKind::SetWeight { bp } => format!("set canary weight to {}", Percent(bp)),
            StepKind::Observe { window, analysis: true } => format!("observe {} with analysis", Human(window)),
            StepKind::Observe { window, analysis: false } => format!("observe {}", Human(window)),
            StepKind::Pause { duration: Some(duration) } => format!("pause {}", Human(duration)),
            StepKind::Pause { duration: None } => "pause until promoted".to_owned(),
            StepKind::Gate => "wait for promotion".to_owned(),
            StepKind::Retain { duration } => format!("keep the old side for {} (instant switch back)", Human(duration)),
        }
    }

    /// The step as the API shows it, at position `index`.
    pub fn to_proto(&self, index: u32) -> proto::PlannedStep {
        proto::PlannedStep {
            index,
            description: self.description(),
            canary_weight: spec::percent(self.weight),
            weights: self.weights.clone(),
            duration: self.duration().map(Into::into),
            analysis: self.analysis(),
            gate: self.waits_for_promotion(),
            replicas: self.replicas.map(Into::into),
        }
    }
}

/// The ordered steps of a rollout; always non-empty and ending at 100%.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    sides: Sides,
    steps: Vec<Step>,
}

impl Plan {
    /// The plan of a validated spec.
    pub fn new(spec: &Spec) -> Self {
        let mut builder = Builder { spec, sides: Sides::of(spec), steps: Vec::new(), weight: 0 };
        match &spec.strategy {
            Strategy::Strangler(stages) => {
                for stage in stages {
                    builder.set_weight(stage.weight);
                    // At 100% the old environment gets no traffic left to compare with: the
                    // last stage is observed (and can still be aborted) but not judged.
                    let analysis = spec.analysis.is_some() && stage.weight < FULL_WEIGHT;
                    builder.observe(stage.window, analysis, None, stage.progress_deadline);
                }
            }
            Strategy::Canary(steps) => {
                for step in steps {
                    match step {
                        CanaryStep::SetWeight(bp) => builder.set_weight(*bp),
                        CanaryStep::Pause(duration) => builder.push(StepKind::Pause { duration: *duration }, None),
                        CanaryStep::Analysis { window, template, progress_deadline } => {
                            builder.observe(*window, true, template.as_ref(), *progress_deadline)
                        }
                    }
                }
            }
            Strategy::BlueGreen(blue_green) => {
                if let Some(window) = blue_green.preview_window {
                    builder.observe(window, spec.analysis.is_some(), None, None);
                }
                builder.set_weight(FULL_WEIGHT);
                builder.push(StepKind::Retain { duration: blue_green.retention }, None);
            }
        }
        if builder.weight < FULL_WEIGHT {
            builder.set_weight(FULL_WEIGHT);
        }
        Self { sides: builder.sides, steps: builder.steps }
    }

    /// The steps in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The step at `index`, if the plan has one.
    pub fn step(&self, index: usize) -> Option<&Step> {
        self.steps.get(index)
    }

    /// How many steps the plan has (never zero).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Always false: every plan has at least its final switch to 100%.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Shortest possible total time: gates and open pauses count as zero; blue-green
    /// retention counts, since the rollout holds the old side for it.
    pub fn minimum_duration(&self) -> Duration {
        self.steps.iter().filter_map(Step::duration).fold(Duration::ZERO, Duration::saturating_add)
    }

    /// The weight to roll back to when step `index` fails (`ROLLBACK_TO_PREVIOUS_STAGE`): the
    /// weight in force before the current weight was first reached, i.e. that of the last
    /// step before `index` with a lower weight, 0 when there is none. Repeating a weight
    /// (`setWeight: 20` twice) therefore does not make 20 its own previous stage. An index
    /// past the end is read as the last step.
    pub fn previous_weight(&self, index: usize) -> u32 {
        let index = index.min(self.steps.len().saturating_sub(1));
        let Some(current) = self.steps.get(index).map(|step| step.weight) else { return 0 };
        self.steps[..index].iter().rev().map(|step| step.weight).find(|&weight| weight < current).unwrap_or(0)
    }

    /// The step that judges the stage at `weight` again after a later one failed: the last
    /// analysed step before `before` at exactly that weight. `None` when no such step
    /// exists, as then nothing could judge the stage again.
    pub fn judged_step_at(&self, weight: u32, before: usize) -> Option<usize> {
        let before = before.min(self.steps.len());
        self.steps[..before].iter().rposition(|step| step.weight == weight && step.analysis())
    }

    /// The weights map traffic takes for a canary `weight` (basis points), e.g. for a
    /// rollback to [`Plan::previous_weight`] or an abort to 0.
    pub fn weights(&self, weight: u32) -> HashMap<String, u32> {
        self.sides.weights(weight)
    }

    /// The plan as the API shows it.
    pub fn to_proto(&self) -> proto::Plan {
        proto::Plan {
            // A plan has as many steps as its spec (plus a few); far below u32::MAX.
            steps: self.steps.iter().zip(0u32..).map(|(step, index)| step.to_proto(index)).collect(),
            minimum_duration: Some(self.minimum_duration().into()),
        }
    }
}

/// The backends a rollout moves traffic between.
#[derive(Clone, Debug, PartialEq)]
struct Sides {
    stable: String,
    canary: String,
    /// The equal-footing baseline, when the spec names one.
    baseline: Option<String>,
}

impl Sides {
    fn of(spec: &Spec) -> Self {
        Self {
            stable: spec.stable_backend.clone(),
            canary: spec.canary_backend.clone(),
            baseline: spec.baseline_backend.clone(),
        }
    }

    /// `{stable: 10000 − weight, canary: weight}`; with a baseline, the baseline takes the
    /// canary's share out of the stable side's, as far as the stable side has it:
    /// `{stable: 10000 − weight − b, baseline: b, canary: weight}` with
    /// `b = min(weight, 10000 − weight)`, so 0 at 0% and at 100%.
    fn weights(&self, weight: u32) -> HashMap<String, u32> {
        let weight = weight.min(FULL_WEIGHT);
        let rest = FULL_WEIGHT - weight;
        match &self.baseline {
            None => HashMap::from([(self.stable.clone(), rest), (self.canary.clone(), weight)]),
            Some(baseline) => {
                let matched = weight.min(rest);
                HashMap::from([
                    (self.stable.clone(), rest - matched),
                    (baseline.clone(), matched),
                    (self.canary.clone(), weight),
                ])
            }
        }
    }
}

/// Accumulates steps while tracking the weight in force.
struct Builder<'a> {
    spec: &'a Spec,
    sides: Sides,
    steps: Vec<Step>,
    weight: u32,
}

impl Builder<'_> {
    /// A weight change; with `manual_gate`, the first change to 100% is preceded by a gate.
    fn set_weight(&mut self, bp: u32) {
        if self.spec.manual_gate && bp == FULL_WEIGHT && self.weight < FULL_WEIGHT {
            self.push(StepKind::Gate, None);
        }
        self.weight = bp;
        self.push(StepKind::SetWeight { bp }, None);
    }

    /// An observation window at the current weight; `template` and `progress_deadline`
    /// override the spec's.
    fn observe(
        &mut self,
        window: Duration,
        analysis: bool,
        template: Option<&AnalysisTemplate>,
        progress_deadline: Option<Duration>,
    ) {
        let template = if analysis {
            template.or_else(|| self.spec.analysis.as_ref().and_then(|spec| spec.template_for(self.weight))).cloned()
        } else {
            None
        };
        self.push(StepKind::Observe { window, analysis }, template);
        if let Some(step) = self.steps.last_mut() {
            step.progress_deadline = progress_deadline.or(self.spec.deadlines.progress);
        }
    }

    fn push(&mut self, kind: StepKind, template: Option<AnalysisTemplate>) {
        let weight = self.weight;
        self.steps.push(Step {
            kind,
            weight,
            weights: self.sides.weights(weight),
            template,
            replicas: self.spec.scaling.map(|scaling| scaling.at_weight(weight)),
            progress_deadline: self.spec.deadlines.progress,
        });
    }
}

/// A weight in basis points as a percentage without trailing zeros: `20%`, `20.5%`, `0.25%`.
struct Percent(u32);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, hundredths) = (self.0 / 100, self.0 % 100);
        match hundredths {
            0 => write!(f, "{whole}%"),
            h if h % 10 == 0 => write!(f, "{whole}.{}%", h / 10),
            h => write!(f, "{whole}.{h:02}%"),
        }
    }
}

/// A duration the way people write it: `90s` → `1m30s`, `24h`, `14d`. Days are used from
/// two days up, so a one-day window reads as the `24h` the docs talk about.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DAY: u64 = 24 * 3600;
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if secs == 0 && nanos == 0 {
            return f.write_str("0s");
        }
        let (days, rest) = if secs >= 2 * DAY { (secs / DAY, secs % DAY) } else { (0, secs) };
        let parts = [
            (days, "d"),
            (rest / 3600, "h"),
            (rest % 3600 / 60, "m"),
            (rest % 60, "s"),
            (u64::from(nanos / 1_000_000), "ms"),
            (u64::from(nanos / 1_000 % 1_000), "us"),
            (u64::from(nanos % 1_000), "ns"),
        ];
        for (value, unit) in parts.into_iter().filter(|(value, _)| *value > 0) {
            write!(f, "{value}{unit}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
