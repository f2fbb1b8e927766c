//! The judge: templates, checks, scores and verdicts, with sequential testing so that
//! judging a run again and again does not inflate false failures.
//!
//! - [`template`]: validating an `AnalysisTemplate` into a [`Template`], and the default one;
//! - `check` (private): one check at one look, judged as described below;
//! - [`verdict`]: the weighted score and the verdict.
//!
//! A [`Judge`] carries a run's statistical state from look to look. How it treats repeated
//! looks depends on what it is told:
//!
//! - `planned_looks: Some(1)` (`Analyze`): every test at its alpha, once;
//! - cumulative windows (a run reading everything since it started, the default): the
//!   mixture SPRT, whose always-valid p-value keeps a healthy canary's chance of ever
//!   failing the run at or below alpha however many looks there are;
//! - sliding windows ([`Judge::with_sliding_window`], or detected when a side's sample
//!   count shrinks between looks): alpha spent look by look, using the planned number of
//!   looks when the run's duration is known.
//!
//! # How each rule is judged
//!
//! Rules on plain values compare numbers: the source gives no sampling distribution. Rules
//! on counts or histograms are judged with a test, so noise in a small sample does not
//! fail a healthy canary:
//!
//! | observation | threshold `max` | relative `ratio` | statistical `margin` |
//! |---|---|---|---|
//! | rate | rate above `max` (exact binomial) | `p_c > ratio p_b` (score test) | `p_c > p_b + margin` |
//! | latency | share of requests above `max` exceeds `1 - q` | share above `ratio x` the baseline's quantile exceeds the baseline's share above it | Mann-Whitney, baseline scaled by `1 + margin` |
//!
//! A rate's `min` is the mirror test (rate below `min`); a latency `min` and every rule on
//! plain values compare numbers.
//!
//! A tested check FAILs only when its test is significant (and, for thresholds and ratios,
//! the observed value also breaks the rule); it PASSes when the observed value keeps the
//! rule (statistical rules: when the test is not significant); in between (the value
//! breaks the rule but not significantly yet) it is INCONCLUSIVE. Too few samples on a
//! side, a failed source, NaN or impossible counts are INCONCLUSIVE, never PASS. A tested
//! check that failed stays failed for the rest of its run: the sequential test stops at
//! its first rejection.
//!
//! # The baseline against itself
//!
//! A source that splits the baseline's requests in two halves (traffic's own statistics
//! do, by sticky key or at random) lets a check that compares the sides measure how far
//! apart two samples of the same backend read, the same way it measures the canary against
//! the baseline: the difference of rates or quantiles, or for a rank test one half's
//! superiority over the other beyond even. A canary is called worse only by more than that:
//! a tested FAIL or INCONCLUSIVE whose canary is no further from the baseline than the
//! halves are from each other is a PASS, and the reason says so. Every such check shows the
//! halves in its reason and in `CheckResult.baseline_noise`. The halves come from the same
//! process, so they catch the noise of the traffic and of the measurement, not a difference
//! between two processes; that is what the dependence correction and an equal-footing
//! baseline are for.
//!
//! # Alpha
//!
//! The template's alpha is split over the checks that run a test in proportion to their
//! alpha weights (evenly unless the template says otherwise), so the guarantee holds for
//! the verdict, not just for each check. Rules on plain values compare numbers and are
//! outside it: the source gives them no distribution.

mod check;
pub mod template;
pub mod verdict;

use std::time::SystemTime;

use ficus_proto::analysis::v1 as proto;

use self::check::{CheckState, Look, Mode, SavedCheck};
pub use self::template::{CheckSpec, MetricSpec, Rule, Template, default_template};
use crate::observation::Observed;

/// Judges one target's checks look after look, keeping the sequential tests' state.
#[derive(Clone, Debug)]
pub struct Judge {
    template: Template,
    planned_looks: Option<u32>,
    /// Looks so far; the next verdict's sequence is one more.
    looks: u64,
    /// Whether windows slide (told, or detected from shrinking counts).
    sliding: bool,
    states: Vec<CheckState>,
    /// Samples (baseline, canary) each check saw at the last look, to detect a window that
    /// slides: cumulative counts never shrink.
    last_samples: Vec<Option<(u64, u64)>>,
}

impl Judge {
    /// A judge for `template`. `planned_looks` is how many judgements the run will make
    /// when its duration is known: `Some(1)` is a one-shot judgement (`Analyze`), each test
    /// at its alpha; otherwise the judge tests sequentially.
    pub fn new(template: Template, planned_looks: Option<u32>) -> Self {
        let checks = template.checks.len();
        Self {
            template,
            planned_looks: planned_looks.filter(|looks| *looks > 0),
            looks: 0,
            sliding: false,
            states: vec![CheckState::default(); checks],
            last_samples: vec![None; checks],
        }
    }

    /// Where the judge's sequential tests stand, to store with the run so that a run
    /// resumed after a restart continues its tests instead of starting new ones (each new
    /// start would risk another alpha of false failures).
    pub fn saved(&self) -> SavedJudge {
        SavedJudge {
            looks: self.looks,
            sliding: self.sliding,
            checks: self.states.iter().map(CheckState::saved).collect(),
            last_samples: self.last_samples.clone(),
        }
    }

    /// Continues from `saved`; ignored when it belongs to another template (a different
    /// number of checks), so a judge never mixes states of different checks.
    pub fn resume(mut self, saved: SavedJudge) -> Self {
        if saved.checks.len() == self.states.len() && saved.last_samples.len() == self.last_samples.len() {
            self.looks = saved.looks;
            self.sliding |= saved.sliding;
            self.states = saved.checks.iter().map(CheckState::restored).collect();
            self.last_samples = saved.last_samples;
        }
        self
    }

    /// Tells the judge that each look reads a sliding window rather than everything since
    /// the run started, so it spends alpha look by look instead of accumulating evidence.
    pub fn with_sliding_window(mut self) -> Self {
        self.sliding = true;
        self
    }

    /// The template being applied.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// Judges one look: `observed` holds one result per check, in the template's order, with
    /// `Err` for a check whose source failed (that check is INCONCLUSIVE with the error as
    /// its reason; a missing entry counts as a failed source). The verdict's `sequence`
    /// counts calls from 1.
    pub fn judge(&mut self, observed: &[Result<Observed, String>], now: SystemTime) -> proto::Verdict {
        self.looks += 1;
        self.detect_sliding(observed);
        let mode = match (self.planned_looks, self.sliding) {
            (Some(1), _) => Mode::OneShot,
            (planned, true) => Mode::Sliding { planned },
            (_, false) => Mode::Cumulative,
        };
        let number = self.looks;
        let results = self
            .template
            .checks
            .iter()
            .zip(self.states.iter_mut())
            .enumerate()
            .map(|(index, (spec, state))| {
                let look = Look { number, alpha: spec.alpha, mode };
                check::evaluate(spec, observed.get(index), &look, state)
            })
            .collect();
        verdict::verdict(&self.template, results, self.looks, now)
    }

    fn detect_sliding(&mut self, observed: &[Result<Observed, String>]) {
        for (index, last) in self.last_samples.iter_mut().enumerate() {
            let Some(Ok(observed)) = observed.get(index) else { continue };
            let now = (observed.baseline.samples(), observed.canary.samples());
            if let Some(before) = *last
                && (now.0 < before.0 || now.1 < before.1)
            {
                self.sliding = true;
            }
            *last = Some(now);
        }
    }
}

/// A judge's sequential state, as stored beside its run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedJudge {
    looks: u64,
    sliding: bool,
    checks: Vec<SavedCheck>,
    last_samples: Vec<Option<(u64, u64)>>,
}

#[cfg(test)]
mod tests;
