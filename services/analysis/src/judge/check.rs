//! One check at one look: an observation and a rule become a `CheckResult` with its
//! evidence, rule text and a one-line reason.
//!
//! The rules and how each is judged are described in the `judge` module docs.

use ficus_proto::analysis::v1::{self as proto, Outcome};

use super::template::{CheckSpec, MetricSpec, Rule};
use crate::{
    observation::{Observation, ObservationKind, Observed, PeriodPair},
    statistics::{
        Evidence,
        dependence::{self, DesignEffect, PeriodHistograms},
        proportion::{self, Counts},
        rank,
        sequential::{AlwaysValidP, spending_share},
    },
};

/// Mixing scale of the sequential test on Mann-Whitney's superiority: tuned to detect a
/// canary that is slower than the baseline in 55% of pairs (0.05 above even) fastest, about
/// a 10% shift of a typical latency distribution beyond the margin.
const RANK_MIXING_SCALE: f64 = 0.05;

/// Mixing scale when the null's rate is 0 or 1 and gives no scale of its own.
const FALLBACK_RATE_SCALE: f64 = 1e-3;

/// How the judge treats repeated looks (see `statistics::sequential`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One look: each test at its alpha.
    OneShot,
    /// Cumulative windows: the mixture SPRT's always-valid p-value.
    Cumulative,
    /// Sliding windows: alpha spent look by look.
    Sliding {
        /// Planned looks, when the run's duration is known.
        planned: Option<u32>,
    },
}

/// The look being judged.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Look {
    /// Position in the run, from 1.
    pub number: u64,
    /// Alpha of the check judged at this look (its share of the template's).
    pub alpha: f64,
    /// How repeated looks are treated.
    pub mode: Mode,
}

impl CheckState {
    /// What must survive a restart of the run.
    pub(crate) fn saved(&self) -> SavedCheck {
        SavedCheck {
            upper: self.upper.value(),
            lower: self.lower.value(),
            failed: self.failed.as_ref().map(|failed| (failed.look, failed.reason.clone(), failed.p_value)),
        }
    }

    /// The state `saved` described.
    pub(crate) fn restored(saved: &SavedCheck) -> Self {
        Self {
            upper: AlwaysValidP::resumed(saved.upper),
            lower: AlwaysValidP::resumed(saved.lower),
            failed: saved.failed.clone().map(|(look, reason, p_value)| Failed { look, reason, p_value }),
        }
    }
}

/// A check's sequential state as stored with its run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedCheck {
    upper: f64,
    lower: f64,
    failed: Option<(u64, String, Option<f64>)>,
}

/// What a check remembers between looks.
#[derive(Clone, Debug, Default)]
pub(crate) struct CheckState {
    /// Sequential p-value of "worse than the upper bound" (or of the comparison).
    upper: AlwaysValidP,
    /// Sequential p-value of "below the lower bound".
    lower: AlwaysValidP,
    /// The look at which a test failed, and why; the check stays failed.
    failed: Option<Failed>,
}

#[derive(Clone, Debug)]
struct Failed {
    look: u64,
    reason: String,
    p_value: Option<f64>,
}

/// The outcome of judging one observation.
struct Judged {
    outcome: Outcome,
    p_value: Option<f64>,
    reason: String,
    /// Whether the outcome came from a statistical test (so a FAIL is final).
    tested: bool,
    /// The baseline compared with itself, when measured.
    noise: Option<proto::BaselineNoise>,
}

impl Judged {
    fn plain(outcome: Outcome, reason: String) -> Self {
        Self { outcome, p_value: None, reason, tested: false, noise: None }
    }

    fn tested(outcome: Outcome, p: f64, reason: String) -> Self {
        Self { outcome, p_value: Some(p), reason, tested: true, noise: None }
    }

    fn inconclusive(reason: String) -> Self {
        Self::plain(Outcome::Inconclusive, reason)
    }
}

/// How much the requests behind a test move together, measured on the observation's
/// periods (see `statistics::dependence`).
enum Dependence {
    /// The source gives no periods: requests are taken as independent, as the source
    /// cannot say otherwise.
    Unmeasured,
    /// Measured on the periods; `None` when nothing varied in them, which leaves no
    /// evidence to widen.
    Measured(Option<DesignEffect>),
}

impl Dependence {
    /// The canary's own rate, with `counts` picking each period's failures out of trials.
    fn canary(periods: &[PeriodPair], counts: impl Fn(&Observation) -> Counts) -> Self {
        if periods.is_empty() {
            return Self::Unmeasured;
        }
        let canary: Vec<Counts> = periods.iter().map(|period| counts(&period.canary)).collect();
        Self::Measured(dependence::rate(&canary))
    }

    /// A comparison `p_c - ratio p_b` of the rates `canary` and `baseline` pick.
    fn compared(
        periods: &[PeriodPair],
        ratio: f64,
        canary: impl Fn(&Observation) -> Counts,
        baseline: impl Fn(&Observation) -> Counts,
    ) -> Self {
        if periods.is_empty() {
            return Self::Unmeasured;
        }
        let pairs: Vec<(Counts, Counts)> =
            periods.iter().map(|period| (canary(&period.canary), baseline(&period.baseline))).collect();
        Self::Measured(dependence::rate_difference(&pairs, ratio))
    }

    /// Mann-Whitney's comparison with a relative margin.
    fn ranked(periods: &[PeriodPair], margin: f64) -> Self {
        if periods.is_empty() {
            return Self::Unmeasured;
        }
        let pairs: Vec<PeriodHistograms<'_>> =
            periods.iter().map(|period| (buckets(&period.canary), buckets(&period.baseline))).collect();
        Self::Measured(dependence::rank(&pairs, margin))
    }

    /// The factor on the test's variance at `alpha`.
    fn factor(&self, alpha: f64) -> f64 {
        match self {
            Self::Measured(Some(effect)) => effect.factor(alpha),
            Self::Unmeasured | Self::Measured(None) => 1.0,
        }
    }

    /// What the reason says of it, when it widened the test.
    fn describe(&self, alpha: f64) -> Option<String> {
        let Self::Measured(Some(effect)) = self else { return None };
        let factor = effect.factor(alpha);
        if effect.periods < 2 {
            return Some(format!(
                "one period so far, so how requests move together is not measured yet: variance x{}",
                format_number(factor)
            ));
        }
        (factor > 1.0).then(|| {
            format!("requests move together: variance x{} over {} periods", format_number(factor), effect.periods)
        })
    }
}

/// A period's failures out of trials: errors of a rate, or requests slower than
/// `latency_limit` of a histogram.
fn period_counts(latency_limit: f64) -> impl Fn(&Observation) -> Counts {
    move |observation| match observation {
        Observation::Proportion { failures, trials } => Counts { failures: *failures, trials: *trials },
        Observation::Latency { buckets, .. } => {
            Counts { failures: count_above(buckets, latency_limit), trials: total(buckets) }
        }
        Observation::Value { .. } => Counts::default(),
    }
}

/// A period's histogram; empty for other shapes.
fn buckets(observation: &Observation) -> &[(f64, u64)] {
    match observation {
        Observation::Latency { buckets, .. } => buckets,
        Observation::Proportion { .. } | Observation::Value { .. } => &[],
    }
}

/// Which sequential p-value a test feeds.
#[derive(Clone, Copy)]
enum Side {
    Upper,
    Lower,
}

/// Judges `spec` on `observed` (`None` when the caller passed no observation for it).
pub(crate) fn evaluate(
    spec: &CheckSpec,
    observed: Option<&Result<Observed, String>>,
    look: &Look,
    state: &mut CheckState,
) -> proto::CheckResult {
    let (judged, observed) = match observed {
        None => (Judged::inconclusive("no observation was made for this check".to_owned()), None),
        Some(Err(error)) => (Judged::inconclusive(format!("source failed: {error}")), None),
        Some(Ok(observed)) => {
            let mut judged = judge_observed(spec, observed, look, state);
            if let Some(note) = &observed.note {
                judged.reason = format!("{}: {note}", judged.reason);
            }
            (judged, Some(observed))
        }
    };
    let judged = match (&state.failed, judged.outcome) {
        (Some(failed), outcome) if outcome != Outcome::Fail => Judged {
            outcome: Outcome::Fail,
            p_value: failed.p_value,
            reason: format!("failed at judgement {}: {}", failed.look, failed.reason),
            tested: true,
            noise: judged.noise,
        },
        (None, Outcome::Fail) if judged.tested => {
            state.failed = Some(Failed { look: look.number, reason: judged.reason.clone(), p_value: judged.p_value });
            judged
        }
        _ => judged,
    };
    let finite = |value: f64| if value.is_finite() { value } else { 0.0 };
    proto::CheckResult {
        name: spec.name.clone(),
        outcome: judged.outcome.into(),
        baseline_value: observed.map_or(0.0, |observed| finite(observed.baseline.value())),
        canary_value: observed.map_or(0.0, |observed| finite(observed.canary.value())),
        baseline_samples: observed.map_or(0, |observed| observed.baseline.samples()),
        canary_samples: observed.map_or(0, |observed| observed.canary.samples()),
        p_value: judged.p_value,
        rule: rule_text(spec, look),
        reason: judged.reason,
        critical: spec.critical,
        weight: spec.weight,
        baseline_noise: judged.noise,
    }
}

fn judge_observed(spec: &CheckSpec, observed: &Observed, look: &Look, state: &mut CheckState) -> Judged {
    let (baseline, canary) = (&observed.baseline, &observed.canary);
    for (side, observation) in [("baseline", baseline), ("canary", canary)] {
        if let Some(problem) = observation.malformed() {
            return Judged::inconclusive(format!("unusable {side} observation: {problem}"));
        }
    }
    if baseline.kind() != canary.kind() {
        return Judged::inconclusive("baseline and canary observations have different shapes".to_owned());
    }
    let (n_b, n_c) = (baseline.samples(), canary.samples());
    if n_b < spec.min_samples || n_c < spec.min_samples {
        return Judged::inconclusive(format!(
            "too few samples: canary {n_c}, baseline {n_b} (need {} on each side)",
            spec.min_samples
        ));
    }
    let label = spec.metric.label();
    let periods = observed.periods.as_slice();
    let errors = || period_counts(f64::INFINITY);
    let (mut judged, dependence) = match (spec.rule, baseline, canary) {
        (Rule::Threshold { max, min }, _, Observation::Value { value, .. }) => {
            (threshold_value(&label, *value, max, min), Dependence::Unmeasured)
        }
        (Rule::Threshold { max, min }, _, Observation::Proportion { failures, trials }) => {
            let canary = Counts { failures: *failures, trials: *trials };
            let dependence = Dependence::canary(periods, errors());
            (threshold_rate(&label, canary, max, min, look, &dependence, state), dependence)
        }
        (Rule::Threshold { max, min }, _, Observation::Latency { buckets, quantile, value }) => {
            let dependence = Dependence::canary(periods, period_counts(max.unwrap_or(f64::INFINITY)));
            let judged = threshold_latency(&label, buckets, *quantile, *value, max, min, look, &dependence, state);
            (judged, dependence)
        }
        (
            Rule::Relative { max_ratio, min_difference },
            Observation::Value { value: b, .. },
            Observation::Value { value: c, .. },
        ) => (relative_value(&label, *b, *c, max_ratio, min_difference), Dependence::Unmeasured),
        (
            Rule::Relative { max_ratio, min_difference },
            Observation::Proportion { failures: x_b, trials: n_b },
            Observation::Proportion { failures: x_c, trials: n_c },
        ) => {
            let baseline = Counts { failures: *x_b, trials: *n_b };
            let canary = Counts { failures: *x_c, trials: *n_c };
            let (test_ratio, _) = relative_rate_null(baseline, max_ratio, min_difference);
            let dependence = Dependence::compared(periods, test_ratio, errors(), errors());
            let judged = relative_rate(&label, baseline, canary, (max_ratio, min_difference), look, &dependence, state);
            (judged, dependence)
        }
        (
            Rule::Relative { max_ratio, min_difference },
            Observation::Latency { buckets: b, value: q_b, .. },
            Observation::Latency { buckets: c, value: q_c, .. },
        ) => {
            let limit = relative_limit(*q_b, max_ratio, min_difference);
            let dependence = Dependence::compared(periods, 1.0, period_counts(limit), period_counts(*q_b));
            let bounds = (max_ratio, min_difference);
            let judged = relative_latency(&label, (b, *q_b), (c, *q_c), bounds, look, &dependence, state);
            (judged, dependence)
        }
        (
            Rule::Statistical { margin },
            Observation::Proportion { failures: x_b, trials: n_b },
            Observation::Proportion { failures: x_c, trials: n_c },
        ) => {
            let baseline = Counts { failures: *x_b, trials: *n_b };
            let canary = Counts { failures: *x_c, trials: *n_c };
            let dependence = Dependence::compared(periods, 1.0, errors(), errors());
            (statistical_rate(&label, baseline, canary, margin, look, &dependence, state), dependence)
        }
        (
            Rule::Statistical { margin },
            Observation::Latency { buckets: b, .. },
            Observation::Latency { buckets: c, .. },
        ) => {
            let dependence = Dependence::ranked(periods, margin);
            (statistical_latency(b, c, margin, look, &dependence, state), dependence)
        }
        (Rule::Statistical { .. }, _, _) => (
            Judged::inconclusive(
                "the source returned plain values; a statistical rule needs counts or a histogram".to_owned(),
            ),
            Dependence::Unmeasured,
        ),
        // Shapes already match; this is unreachable by the guard above but answers safely.
        (Rule::Relative { .. }, _, _) => (
            Judged::inconclusive("baseline and canary observations have different shapes".to_owned()),
            Dependence::Unmeasured,
        ),
    };
    if judged.tested
        && let Some(note) = dependence.describe(look.alpha)
    {
        judged.reason = format!("{}; {note}", judged.reason);
    }
    if let Some(noise) = baseline_noise(spec, observed) {
        let against_itself = noise_text(spec.rule, baseline.kind(), &noise);
        // Only a canary the test called worse is measured again: for a rank test that is a
        // second merge of both sides, which a passing look need not pay.
        let called_worse = judged.tested && judged.outcome != Outcome::Pass;
        let within_noise =
            called_worse && difference(spec.rule, baseline, canary).is_some_and(|canary| canary <= noise.difference);
        judged.reason = if within_noise {
            judged.outcome = Outcome::Pass;
            format!("{}; but the baseline differs as much from itself ({against_itself})", judged.reason)
        } else {
            format!("{}; {against_itself}", judged.reason)
        };
        judged.noise = Some(noise);
    }
    judged
}

/// How far the canary is from the baseline, as the noise check measures it: the difference
/// of rates or of latency quantiles, or for a rank test the canary's superiority over the
/// scaled baseline beyond even. `None` for rules that do not compare the sides, and for
/// observations that give no number.
fn difference(rule: Rule, baseline: &Observation, canary: &Observation) -> Option<f64> {
    let difference = match (rule, baseline, canary) {
        (
            Rule::Statistical { margin },
            Observation::Latency { buckets: b, .. },
            Observation::Latency { buckets: c, .. },
        ) => rank::mann_whitney_greater(c, b, margin)?.superiority - 0.5,
        (
            Rule::Relative { .. } | Rule::Statistical { .. },
            Observation::Proportion { .. },
            Observation::Proportion { .. },
        )
        | (Rule::Relative { .. }, Observation::Latency { .. }, Observation::Latency { .. }) => {
            canary.value() - baseline.value()
        }
        _ => return None,
    };
    difference.is_finite().then_some(difference)
}

/// The baseline's two halves compared the way the check compares the canary with the
/// baseline (a rank test without the margin, which is an allowance for the canary), when
/// the source split the baseline and each half has at least half the check's minimum
/// sample.
fn baseline_noise(spec: &CheckSpec, observed: &Observed) -> Option<proto::BaselineNoise> {
    let [first, second] = observed.baseline_halves.as_ref()?;
    let enough = spec.min_samples.div_ceil(2).max(1);
    let usable = |half: &Observation| half.samples() >= enough && half.malformed().is_none();
    if !(usable(first) && usable(second)) {
        return None;
    }
    let even = match spec.rule {
        Rule::Statistical { .. } => Rule::Statistical { margin: 0.0 },
        rule => rule,
    };
    // Either half may be the slower one; the noise is how far apart they are.
    let apart = difference(even, first, second)?.abs();
    Some(proto::BaselineNoise { first_value: first.value(), second_value: second.value(), difference: apart })
}

/// How the baseline against itself reads in a reason, e.g. `baseline against itself:
/// 0.51 ms vs 0.53 ms`.
fn noise_text(rule: Rule, kind: ObservationKind, noise: &proto::BaselineNoise) -> String {
    let (first, second) = (noise.first_value, noise.second_value);
    match (rule, kind) {
        (Rule::Statistical { .. }, ObservationKind::Latency) => format!(
            "baseline against itself: one half slower than the other in {} of pairs",
            format_percent(0.5 + noise.difference)
        ),
        (_, ObservationKind::Latency) => {
            format!("baseline against itself: {} vs {}", format_seconds(first), format_seconds(second))
        }
        _ => format!("baseline against itself: {} vs {}", format_percent(first), format_percent(second)),
    }
}

/// Decides a test at this look: returns whether it is significant and the p-value compared
/// with the look's alpha. The evidence's variance is first widened by how much the requests
/// behind it move together (`dependence`, see `statistics::dependence`).
fn significant(
    state: &mut CheckState,
    side: Side,
    evidence: &Evidence,
    tau: f64,
    look: &Look,
    dependence: &Dependence,
) -> (bool, f64) {
    let evidence = &evidence.widened(dependence.factor(look.alpha));
    let p = match look.mode {
        Mode::OneShot => evidence.p_value,
        Mode::Cumulative => {
            let slot = match side {
                Side::Upper => &mut state.upper,
                Side::Lower => &mut state.lower,
            };
            // Failing needs both the always-valid p-value and this look's own (exact for
            // small counts) p-value: the second only removes failures.
            slot.update(evidence, tau).max(evidence.p_value)
        }
        Mode::Sliding { planned } => {
            let look_number = u32::try_from(look.number).unwrap_or(u32::MAX);
            (evidence.p_value / spending_share(look_number, planned)).min(1.0)
        }
    };
    (p <= look.alpha, p)
}

/// The mixing scale of a rate test whose null boundary is `rate`: the size of a doubling,
/// or of halving the distance to 1.
///
/// A half-normal mixture of scale `τ` is fastest on excesses near `τ` and slow on ones far
/// below it: its boundary is tightest where the variance `V*` satisfies
/// `τ² = V* (2 ln(1/2α) + ln(1 + 2 ln(1/2α)))` (Howard et al., "Time-uniform,
/// nonparametric, nonasymptotic confidence sequences", 2021, one-sided), that is
/// `τ ≈ 3 sqrt(V*)` at α = 0.05 / 3 (and 2.7 at the default template's 0.033): an excess
/// of `τ` is caught about when it is three standard errors away. A doubling is the
/// regression a canary must be caught at quickly, and the choice is not delicate: from half
/// to 1.5 times this scale, median times to fail a doubled error rate are within noise of
/// each other (simulated at 1000 req/s, 5% canary).
/// The statistical rule's margin is not a good scale: it is how much worse the canary may
/// be, so a mixture tuned to it spends its weight on excesses too small to matter and, in
/// the same simulation, takes the median time to fail from 75 s to about 125 s.
fn rate_scale(rate: f64) -> f64 {
    let scale = rate.min(1.0 - rate);
    if scale > 0.0 { scale } else { FALLBACK_RATE_SCALE }
}

fn threshold_value(label: &str, value: f64, max: Option<f64>, min: Option<f64>) -> Judged {
    let shown = format_number(value);
    if let Some(max) = max.filter(|max| value > *max) {
        return Judged::plain(Outcome::Fail, format!("canary {label} {shown} is above {}", format_number(max)));
    }
    if let Some(min) = min.filter(|min| value < *min) {
        return Judged::plain(Outcome::Fail, format!("canary {label} {shown} is below {}", format_number(min)));
    }
    Judged::plain(Outcome::Pass, format!("canary {label} {shown} is within bounds"))
}

fn threshold_rate(
    label: &str,
    canary: Counts,
    max: Option<f64>,
    min: Option<f64>,
    look: &Look,
    dependence: &Dependence,
    state: &mut CheckState,
) -> Judged {
    let rate = canary.rate();
    let shown = format_percent(rate);
    let mut p_values = Vec::new();
    if let Some(max) = max {
        let Some(evidence) = proportion::above_bound(canary, max) else {
            return Judged::inconclusive("no trials to test".to_owned());
        };
        let (fail, p) = significant(state, Side::Upper, &evidence, rate_scale(max), look, dependence);
        if fail {
            let reason =
                format!("canary {label} {shown} is significantly above {} (p = {})", format_percent(max), format_p(p));
            return Judged::tested(Outcome::Fail, p, reason);
        }
        if rate > max {
            let reason = format!(
                "canary {label} {shown} is above {} but not significantly yet (p = {})",
                format_percent(max),
                format_p(p)
            );
            return Judged::tested(Outcome::Inconclusive, p, reason);
        }
        p_values.push(p);
    }
    if let Some(min) = min {
        let Some(evidence) = proportion::below_bound(canary, min) else {
            return Judged::inconclusive("no trials to test".to_owned());
        };
        let (fail, p) = significant(state, Side::Lower, &evidence, rate_scale(min), look, dependence);
        if fail {
            let reason =
                format!("canary {label} {shown} is significantly below {} (p = {})", format_percent(min), format_p(p));
            return Judged::tested(Outcome::Fail, p, reason);
        }
        if rate < min {
            let reason = format!(
                "canary {label} {shown} is below {} but not significantly yet (p = {})",
                format_percent(min),
                format_p(p)
            );
            return Judged::tested(Outcome::Inconclusive, p, reason);
        }
        p_values.push(p);
    }
    let p = p_values.into_iter().fold(1.0, f64::min);
    Judged::tested(Outcome::Pass, p, format!("canary {label} {shown} is within bounds"))
}

#[allow(clippy::too_many_arguments)]
fn threshold_latency(
    label: &str,
    buckets: &[(f64, u64)],
    quantile: f64,
    value: f64,
    max: Option<f64>,
    min: Option<f64>,
    look: &Look,
    dependence: &Dependence,
    state: &mut CheckState,
) -> Judged {
    let shown = format_seconds(value);
    if let Some(min) = min.filter(|min| value < *min) {
        return Judged::plain(Outcome::Fail, format!("canary {label} {shown} is below {}", format_seconds(min)));
    }
    let Some(max) = max else {
        return Judged::plain(Outcome::Pass, format!("canary {label} {shown} is within bounds"));
    };
    let total = total(buckets);
    let slower = Counts { failures: count_above(buckets, max), trials: total };
    let allowed = 1.0 - quantile;
    let Some(evidence) = proportion::above_bound(slower, allowed) else {
        return Judged::inconclusive("no requests to test".to_owned());
    };
    let (fail, p) = significant(state, Side::Upper, &evidence, rate_scale(allowed), look, dependence);
    let share = format!(
        "{} of requests slower than {}, {} allowed",
        format_percent(slower.rate()),
        format_seconds(max),
        format_percent(allowed)
    );
    let (outcome, reason) = if value <= max {
        (Outcome::Pass, format!("canary {label} {shown} is within {}", format_seconds(max)))
    } else if fail {
        (
            Outcome::Fail,
            format!(
                "canary {label} {shown} is significantly above {}: {share} (p = {})",
                format_seconds(max),
                format_p(p)
            ),
        )
    } else {
        (
            Outcome::Inconclusive,
            format!(
                "canary {label} {shown} is above {} but not significantly yet: {share} (p = {})",
                format_seconds(max),
                format_p(p)
            ),
        )
    };
    Judged::tested(outcome, p, reason)
}

/// The most a relative rule lets the canary's value be: `ratio` times the baseline's, or
/// the practical floor above it, whichever is more.
fn relative_limit(baseline: f64, ratio: f64, min_difference: f64) -> f64 {
    (ratio * baseline).max(baseline + min_difference)
}

/// How a relative rule's bound reads, e.g. `1.5 x baseline` or `baseline + 1 ms`: the
/// part of `max(ratio x baseline, baseline + floor)` that binds at this baseline.
fn relative_bound(baseline: f64, ratio: f64, min_difference: f64, unit: fn(f64) -> String) -> String {
    if baseline + min_difference > ratio * baseline {
        format!("baseline + {}", unit(min_difference))
    } else {
        format!("{} x baseline", format_number(ratio))
    }
}

/// The effect size a verdict shows: how far the canary is from the baseline, absolutely
/// and as a ratio.
fn effect_size(baseline: f64, canary: f64, unit: fn(f64) -> String) -> String {
    let difference = canary - baseline;
    let sign = if difference < 0.0 { "-" } else { "+" };
    let ratio = if baseline > 0.0 { format!(", x{}", format_number(canary / baseline)) } else { String::new() };
    format!("{sign}{}{ratio}", unit(difference.abs()))
}

/// The null boundary a relative rule on rates tests, as (ratio, margin) of
/// `p_c <= ratio p_b + margin`: of `p_c <= max(ratio p_b, p_b + floor)`, the part that binds
/// at the observed baseline rate.
fn relative_rate_null(baseline: Counts, ratio: f64, min_difference: f64) -> (f64, f64) {
    if baseline.rate() + min_difference > ratio * baseline.rate() { (1.0, min_difference) } else { (ratio, 0.0) }
}

/// Both sides' values and the effect size, e.g. `canary p99 latency 7 ms vs baseline 5 ms
/// (+2 ms, x1.4)`.
fn compared_text(label: &str, baseline: f64, canary: f64, unit: fn(f64) -> String) -> String {
    format!("canary {label} {} vs baseline {} ({})", unit(canary), unit(baseline), effect_size(baseline, canary, unit))
}

fn relative_value(label: &str, baseline: f64, canary: f64, ratio: f64, min_difference: f64) -> Judged {
    let limit = relative_limit(baseline, ratio, min_difference);
    let bound = relative_bound(baseline, ratio, min_difference, format_number);
    let shown = compared_text(label, baseline, canary, format_number);
    if canary > limit {
        Judged::plain(Outcome::Fail, format!("{shown}: above {bound}"))
    } else {
        Judged::plain(Outcome::Pass, format!("{shown}: within {bound}"))
    }
}

fn relative_rate(
    label: &str,
    baseline: Counts,
    canary: Counts,
    (ratio, min_difference): (f64, f64),
    look: &Look,
    dependence: &Dependence,
    state: &mut CheckState,
) -> Judged {
    let (test_ratio, margin) = relative_rate_null(baseline, ratio, min_difference);
    let Some(comparison) = proportion::above_baseline(canary, baseline, test_ratio, margin) else {
        return Judged::inconclusive("no trials to test".to_owned());
    };
    let tau = rate_scale(comparison.boundary_rate);
    let (fail, p) = significant(state, Side::Upper, &comparison.evidence, tau, look, dependence);
    let (p_b, p_c) = (baseline.rate(), canary.rate());
    let shown = compared_text(label, p_b, p_c, format_percent);
    let bound = relative_bound(p_b, ratio, min_difference, format_percent);
    let (outcome, reason) = if p_c <= relative_limit(p_b, ratio, min_difference) {
        (Outcome::Pass, format!("{shown}: within {bound}"))
    } else if fail {
        (Outcome::Fail, format!("{shown}: significantly above {bound} (p = {})", format_p(p)))
    } else {
        (Outcome::Inconclusive, format!("{shown}: above {bound} but not significantly yet (p = {})", format_p(p)))
    };
    Judged::tested(outcome, p, reason)
}

fn relative_latency(
    label: &str,
    (baseline, q_b): (&[(f64, u64)], f64),
    (canary, q_c): (&[(f64, u64)], f64),
    (ratio, min_difference): (f64, f64),
    look: &Look,
    dependence: &Dependence,
    state: &mut CheckState,
) -> Judged {
    let limit = relative_limit(q_b, ratio, min_difference);
    // The quantile rule as a comparison of tail shares: if the canary's quantile is within
    // the limit, the canary has no larger a share of requests above the limit than the
    // baseline has above its own quantile.
    let canary_slow = Counts { failures: count_above(canary, limit), trials: total(canary) };
    let baseline_slow = Counts { failures: count_above(baseline, q_b), trials: total(baseline) };
    let Some(comparison) = proportion::above_baseline(canary_slow, baseline_slow, 1.0, 0.0) else {
        return Judged::inconclusive("no requests to test".to_owned());
    };
    let tau = rate_scale(comparison.boundary_rate);
    let (fail, p) = significant(state, Side::Upper, &comparison.evidence, tau, look, dependence);
    let shown = compared_text(label, q_b, q_c, format_seconds);
    let bound = relative_bound(q_b, ratio, min_difference, format_seconds);
    let (outcome, reason) = if q_c <= limit {
        (Outcome::Pass, format!("{shown}: within {bound}"))
    } else if fail {
        let share = format!(
            "{} of canary requests slower than {}, baseline {} above its own",
            format_percent(canary_slow.rate()),
            format_seconds(limit),
            format_percent(baseline_slow.rate())
        );
        (Outcome::Fail, format!("{shown}: significantly above {bound}, {share} (p = {})", format_p(p)))
    } else {
        (Outcome::Inconclusive, format!("{shown}: above {bound} but not significantly yet (p = {})", format_p(p)))
    };
    Judged::tested(outcome, p, reason)
}

fn statistical_rate(
    label: &str,
    baseline: Counts,
    canary: Counts,
    margin: f64,
    look: &Look,
    dependence: &Dependence,
    state: &mut CheckState,
) -> Judged {
    let Some(comparison) = proportion::above_baseline(canary, baseline, 1.0, margin) else {
        return Judged::inconclusive("no trials to test".to_owned());
    };
    let (fail, p) =
        significant(state, Side::Upper, &comparison.evidence, rate_scale(comparison.boundary_rate), look, dependence);
    let shown =
        format!("canary {label} {} vs baseline {}", format_percent(canary.rate()), format_percent(baseline.rate()));
    let (outcome, reason) = if fail {
        (
            Outcome::Fail,
            format!("{shown}: significantly above baseline + {} (p = {})", format_percent(margin), format_p(p)),
        )
    } else {
        (
            Outcome::Pass,
            format!("{shown}: no significant increase beyond {} (p = {})", format_percent(margin), format_p(p)),
        )
    };
    Judged::tested(outcome, p, reason)
}

fn statistical_latency(
    baseline: &[(f64, u64)],
    canary: &[(f64, u64)],
    margin: f64,
    look: &Look,
    dependence: &Dependence,
    state: &mut CheckState,
) -> Judged {
    let Some(test) = rank::mann_whitney_greater(canary, baseline, margin) else {
        // Only reachable with requests on both sides when every one of them is tied:
        // nothing is slower than anything.
        return if total(canary) > 0 && total(baseline) > 0 {
            Judged::tested(Outcome::Pass, 1.0, "every request falls in one latency bucket on both sides".to_owned())
        } else {
            Judged::inconclusive("no requests to rank".to_owned())
        };
    };
    let (fail, p) = significant(state, Side::Upper, &test.evidence(), RANK_MIXING_SCALE, look, dependence);
    let shift = format_percent(margin);
    let shown = format!("canary slower than baseline + {shift} in {} of pairs", format_percent(test.superiority));
    let (outcome, reason) = if fail {
        (
            Outcome::Fail,
            format!("canary latency is significantly above baseline + {shift}: {shown} (p = {})", format_p(p)),
        )
    } else {
        (Outcome::Pass, format!("no significant latency increase beyond {shift}: {shown} (p = {})", format_p(p)))
    };
    Judged::tested(outcome, p, reason)
}

/// Requests in buckets whose upper bound is above `limit`. A bucket straddling the limit
/// counts as above; buckets are under 1% wide, so this overstates by less than that.
fn count_above(buckets: &[(f64, u64)], limit: f64) -> u64 {
    buckets.iter().filter(|(bound, _)| *bound > limit).fold(0_u64, |sum, (_, count)| sum.saturating_add(*count))
}

fn total(buckets: &[(f64, u64)]) -> u64 {
    buckets.iter().fold(0_u64, |sum, (_, count)| sum.saturating_add(*count))
}

/// The rule as text, e.g. `canary <= 0.01` or `canary <= 1.5 x baseline`; tested rules add
/// the significance level each look is held to.
fn rule_text(spec: &CheckSpec, look: &Look) -> String {
    let level = format!(" (p < {})", format_p(look.alpha));
    let suffix = if spec.is_tested() { level.as_str() } else { "" };
    match spec.rule {
        Rule::Threshold { max, min } => {
            let bound = match (min, max) {
                (Some(min), Some(max)) => format!("{} <= canary <= {}", format_number(min), format_number(max)),
                (Some(min), None) => format!("canary >= {}", format_number(min)),
                (None, Some(max)) => format!("canary <= {}", format_number(max)),
                (None, None) => "canary unbounded".to_owned(),
            };
            format!("{bound}{suffix}")
        }
        Rule::Relative { max_ratio, min_difference } if min_difference > 0.0 => {
            let floor = match spec.metric.observation_kind() {
                ObservationKind::Latency => format_seconds(min_difference),
                ObservationKind::Proportion => format_percent(min_difference),
                ObservationKind::Value => format_number(min_difference),
            };
            format!("canary <= max({} x baseline, baseline + {floor}){suffix}", format_number(max_ratio))
        }
        Rule::Relative { max_ratio, .. } => format!("canary <= {} x baseline{suffix}", format_number(max_ratio)),
        Rule::Statistical { margin } => match spec.metric {
            MetricSpec::Latency { .. } => {
                format!("canary latency not above baseline + {}{suffix}", format_percent(margin))
            }
            _ => format!("canary {} not above baseline + {}{suffix}", spec.metric.label(), format_percent(margin)),
        },
    }
}

/// A number with up to 4 significant digits, without trailing zeros.
pub(crate) fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value == 0.0 {
        return "0".to_owned();
    }
    let digits = (3 - value.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let text = format!("{value:.digits$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
}

/// A proportion as a percentage, e.g. `0.52%`.
fn format_percent(rate: f64) -> String {
    format!("{}%", format_number(rate * 100.0))
}

/// Seconds as milliseconds below one second, e.g. `123 ms`, else `1.5 s`.
fn format_seconds(seconds: f64) -> String {
    if seconds.abs() < 1.0 {
        format!("{} ms", format_number(seconds * 1000.0))
    } else {
        format!("{} s", format_number(seconds))
    }
}

/// A p-value with 3 significant digits, e.g. `0.0167` or `2.3e-9`.
fn format_p(p: f64) -> String {
    if p > 0.0 && p < 1e-4 { format!("{p:.1e}") } else { format_number((p * 1e4).round() / 1e4) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statistics::sequential::ln_mixture_likelihood_ratio;

    #[test]
    fn the_rate_mixing_scale_is_tuned_to_a_doubling_not_to_the_margin() {
        // A canary at twice the baseline's 0.5% error rate, 75 s into a stage with 50 of
        // 1000 req/s, against the statistical rule's 0.1 pp margin: about when it is caught.
        let (canary, baseline, margin) =
            (Counts { failures: 37, trials: 3_750 }, Counts { failures: 356, trials: 71_250 }, 0.001);
        let comparison = proportion::above_baseline(canary, baseline, 1.0, margin).unwrap();
        let ln_ratio = |tau: f64| ln_mixture_likelihood_ratio(&comparison.evidence, tau);
        let chosen = ln_ratio(rate_scale(comparison.boundary_rate));
        let best = (1..=500).map(|i| ln_ratio(f64::from(i) * 1e-4)).fold(f64::MIN, f64::max);
        // Losing `x` nats of evidence is like testing at `alpha e^-x`: the chosen scale
        // costs less than a quarter of a nat, the margin more than a nat.
        assert!(best - chosen < 0.25, "chosen {chosen}, best {best}");
        assert!(chosen - ln_ratio(margin) > 1.0, "chosen {chosen}, margin {}", ln_ratio(margin));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(format_number(0.01), "0.01");
        assert_eq!(format_number(1.5), "1.5");
        assert_eq!(format_number(99.00000000000001), "99");
        assert_eq!(format_number(123456.0), "123456");
        assert_eq!(format_percent(0.0052), "0.52%");
        assert_eq!(format_seconds(0.1234), "123.4 ms");
        assert_eq!(format_p(0.05 / 3.0), "0.0167");
        assert_eq!(format_p(2.34e-9), "2.3e-9");
    }
}
