//! Rollout metrics on the planner's `/metrics`, so that dashboards and alerts can be built
//! on rollouts: the phase each is in, its canary's share and step, the verdicts it got, how
//! fast a FAIL became rollback weights on traffic, and how long rollouts take.
//!
//! Every replica follows every rollout through the store, so each exports the same phase,
//! weight and step series (aggregate them with `max`). Verdicts, rollback times and
//! durations are recorded once, by the replica that drives the rollout. Series of ended
//! rollouts are kept for the [`ENDED_KEPT`] that ended last, so that a planner running for
//! years does not grow its label sets without bound.

use std::{
    collections::VecDeque,
    sync::{Arc, atomic::AtomicU64},
    time::SystemTime,
};

use ficus_proto::{
    analysis::v1::Outcome,
    planner::v1::{self as proto, Phase},
    time,
};
use parking_lot::Mutex;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{machine, rollouts::Rollouts, spec::FULL_WEIGHT};

/// How many ended rollouts keep their series.
pub const ENDED_KEPT: usize = 100;

/// Every phase a rollout can be in, each a series of `ficus_rollout_phase`.
const PHASES: [Phase; 7] = [
    Phase::Pending,
    Phase::Progressing,
    Phase::Paused,
    Phase::Succeeded,
    Phase::RolledBack,
    Phase::Aborted,
    Phase::Failed,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    rollout: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    rollout: String,
    route: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    rollout: String,
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    phase: &'static str,
}

type DurationFamily = Family<EndLabels, Histogram, fn() -> Histogram>;

/// The planner's rollout series; cheap to clone.
#[derive(Clone, Debug)]
pub struct RolloutMetrics {
    phase: Family<PhaseLabels, Gauge>,
    weight: Family<RolloutLabels, Gauge<f64, AtomicU64>>,
    step: Family<RolloutLabels, Gauge>,
    verdicts: Family<VerdictLabels, Counter>,
    rollback: Histogram,
    duration: DurationFamily,
    /// Ended rollouts with series, oldest first.
    ended: Arc<Mutex<VecDeque<RolloutLabels>>>,
}

fn duration_histogram() -> Histogram {
    // 1 s to about 24 days: from a quick canary to a month-long strangler migration.
    Histogram::new(exponential_buckets(1.0, 2.0, 22))
}

impl RolloutMetrics {
    /// Series registered in `registry` (under the service's `ficus_` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            phase: Family::default(),
            weight: Family::default(),
            step: Family::default(),
            verdicts: Family::default(),
            // 10 ms to about 40 s: a rollback lands within a second unless traffic is down.
            rollback: Histogram::new(exponential_buckets(0.01, 2.0, 13)),
            duration: Family::new_with_constructor(duration_histogram),
            ended: Arc::default(),
        };
        registry.register(
            "rollout_phase",
            "1 for the phase each rollout is in, 0 for the others",
            metrics.phase.clone(),
        );
        registry.register(
            "rollout_canary_weight_ratio",
            "The canary's share of the route's traffic the rollout has decided, 0 to 1",
            metrics.weight.clone(),
        );
        registry.register("rollout_step", "The index of the step each rollout is at", metrics.step.clone());
        registry.register(
            "rollout_verdicts",
            "Analysis verdicts the rollouts got, by outcome",
            metrics.verdicts.clone(),
        );
        registry.register(
            "rollout_rollback_seconds",
            "From a failing verdict to traffic confirming the weights that step back from it",
            metrics.rollback.clone(),
        );
        registry.register(
            "rollout_duration_seconds",
            "From creation to traffic confirming the final weights, by how the rollout ended",
            metrics.duration.clone(),
        );
        metrics
    }

    /// Keeps the phase, weight and step series of every rollout current until `shutdown`.
    pub async fn follow(self, rollouts: Rollouts, shutdown: CancellationToken) {
        let mut events = rollouts.subscribe();
        let mut reload = true;
        loop {
            if reload {
                match rollouts.list("", false).await {
                    // Oldest first, so that the newest ended rollouts are the ones kept.
                    Ok(all) => all.iter().rev().for_each(|rollout| self.show(rollout)),
                    Err(error) => tracing::warn!(%error, "cannot list rollouts for their metrics"),
                }
                reload = false;
            }
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => if let Some(rollout) = &event.rollout { self.show(rollout) },
                    Err(broadcast::error::RecvError::Lagged(_)) => reload = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Sets `rollout`'s series to what it is now.
    fn show(&self, rollout: &proto::Rollout) {
        let labels = labels(rollout);
        let mut ended = self.ended.lock();
        if ended.contains(&labels) {
            return;
        }
        for phase in PHASES {
            let series = PhaseLabels {
                rollout: labels.rollout.clone(),
                route: labels.route.clone(),
                phase: phase.as_str_name(),
            };
            self.phase.get_or_create(&series).set(i64::from(phase == rollout.phase()));
        }
        let canary = rollout.spec.as_ref().and_then(|spec| rollout.weights.get(&spec.canary_backend)).copied();
        self.weight.get_or_create(&labels).set(f64::from(canary.unwrap_or(0)) / f64::from(FULL_WEIGHT));
        self.step.get_or_create(&labels).set(i64::from(rollout.step));
        if machine::is_terminal(rollout.phase()) {
            ended.push_back(labels);
            while ended.len() > ENDED_KEPT {
                if let Some(oldest) = ended.pop_front() {
                    self.forget(&oldest);
                }
            }
        }
    }

    fn forget(&self, labels: &RolloutLabels) {
        for phase in PHASES {
            let series = PhaseLabels {
                rollout: labels.rollout.clone(),
                route: labels.route.clone(),
                phase: phase.as_str_name(),
            };
            self.phase.remove(&series);
        }
        self.weight.remove(labels);
        self.step.remove(labels);
        for outcome in [Outcome::Pass, Outcome::Fail, Outcome::Inconclusive] {
            let series = VerdictLabels {
                rollout: labels.rollout.clone(),
                route: labels.route.clone(),
                outcome: outcome.as_str_name(),
            };
            self.verdicts.remove(&series);
        }
    }

    /// Counts a verdict `rollout` got.
    pub fn verdict(&self, rollout: &proto::Rollout, outcome: Outcome) {
        let labels = labels(rollout);
        let series = VerdictLabels { rollout: labels.rollout, route: labels.route, outcome: outcome.as_str_name() };
        self.verdicts.get_or_create(&series).inc();
    }

    /// Traffic confirmed `rollout`'s weights at `now`: records how long a rollback took,
    /// when the weights are a step back from a failing verdict, and how long the rollout
    /// took, when they are its final ones.
    pub fn applied(&self, rollout: &proto::Rollout, now: SystemTime) {
        let decision = rollout.history.last().filter(|entry| entry.weights == rollout.weights);
        let failed_at = decision
            .and_then(|entry| entry.verdict.as_ref())
            .filter(|verdict| verdict.outcome() == Outcome::Fail)
            .and_then(|verdict| verdict.judged_at.as_ref())
            .and_then(time::system_time);
        if let Some(took) = failed_at.and_then(|at| now.duration_since(at).ok()) {
            self.rollback.observe(took.as_secs_f64());
        }
        if machine::is_terminal(rollout.phase()) {
            self.ended(rollout, now);
        }
    }

    /// `rollout` ended at `now` with traffic already carrying its final weights (e.g. it
    /// succeeded at the 100% it had reached): records how long it took.
    pub fn ended(&self, rollout: &proto::Rollout, now: SystemTime) {
        let created = rollout.created_at.as_ref().and_then(time::system_time);
        if let Some(took) = created.and_then(|at| now.duration_since(at).ok()) {
            let labels = EndLabels { phase: rollout.phase().as_str_name() };
            self.duration.get_or_create(&labels).observe(took.as_secs_f64());
        }
    }
}

fn labels(rollout: &proto::Rollout) -> RolloutLabels {
    RolloutLabels {
        rollout: rollout.id.clone(),
        route: rollout.spec.as_ref().map(|spec| spec.route.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    fn rollout(id: &str, phase: Phase, canary: u32) -> proto::Rollout {
        proto::Rollout {
            id: id.into(),
            spec: Some(proto::RolloutSpec {
                route: "checkout".into(),
                stable_backend: "legacy".into(),
                canary_backend: "k8s".into(),
                ..Default::default()
            }),
            phase: phase.into(),
            weights: [("legacy".to_owned(), FULL_WEIGHT - canary), ("k8s".to_owned(), canary)].into(),
            step: 3,
            ..Default::default()
        }
    }

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).expect("encode");
        text
    }

    #[test]
    fn each_rollout_has_one_current_phase_and_its_weight() {
        let mut registry = Registry::with_prefix("ficus");
        let metrics = RolloutMetrics::register(&mut registry);
        metrics.show(&rollout("r1", Phase::Progressing, 2_000));
        metrics.show(&rollout("r1", Phase::Paused, 2_500));
        let text = scrape(&registry);
        assert!(text.contains(r#"ficus_rollout_phase{rollout="r1",route="checkout",phase="PAUSED"} 1"#), "{text}");
        assert!(text.contains(r#"ficus_rollout_phase{rollout="r1",route="checkout",phase="PROGRESSING"} 0"#), "{text}");
        assert!(text.contains(r#"ficus_rollout_canary_weight_ratio{rollout="r1",route="checkout"} 0.25"#), "{text}");
        assert!(text.contains(r#"ficus_rollout_step{rollout="r1",route="checkout"} 3"#), "{text}");
    }

    #[test]
    fn only_the_latest_ended_rollouts_keep_their_series() {
        let mut registry = Registry::with_prefix("ficus");
        let metrics = RolloutMetrics::register(&mut registry);
        for i in 0..=ENDED_KEPT {
            metrics.show(&rollout(&format!("r{i}"), Phase::Succeeded, FULL_WEIGHT));
        }
        let text = scrape(&registry);
        assert!(!text.contains(r#"rollout="r0""#), "the oldest ended rollout is forgotten");
        assert!(text.contains(&format!(r#"rollout="r{ENDED_KEPT}""#)));
        // An ended rollout seen again (a resync) does not come back or count twice.
        metrics.show(&rollout(&format!("r{ENDED_KEPT}"), Phase::Succeeded, FULL_WEIGHT));
        assert_eq!(metrics.ended.lock().len(), ENDED_KEPT);
    }
}
