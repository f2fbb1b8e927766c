//! The rollout state machine: phases and transitions as pure functions of the stored
//! rollout, its plan, and what happened. No I/O: the driver persists the result before it
//! acts on it, so a planner killed at any instant resumes from a decision, never from half
//! of one.
//!
//! The weights in a rollout are always the ones its current state wants on traffic: the
//! step's weight while progressing or paused, the previous stage's after a rollback, 0
//! after an abort. Applying them is idempotent, which is what makes resuming safe.

use std::time::SystemTime;

use ficus_proto::{
    analysis::v1::{Outcome, Verdict},
    planner::v1::{self as proto, Phase},
    time,
};

use crate::{
    plan::{Plan, StepKind},
    spec::{FULL_WEIGHT, FailurePolicy},
};

/// An operator's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Pass the current gate, pause or window; with `full`, go straight to 100%.
    Promote {
        /// Skip every remaining step.
        full: bool,
    },
    /// Hold the current weights.
    Pause,
    /// Continue after a pause.
    Resume,
    /// All traffic back to stable; the rollout ends.
    Abort,
}

/// A command that the rollout's phase does not allow; nothing changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Illegal(pub String);

/// A new state and why it was reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The rollout after the transition (not yet stored).
    pub rollout: proto::Rollout,
    /// Why, in one line.
    pub reason: String,
    /// The phase before.
    pub from: Phase,
}

/// Whether a phase is final.
pub fn is_terminal(phase: Phase) -> bool {
    matches!(phase, Phase::Succeeded | Phase::RolledBack | Phase::Aborted | Phase::Failed)
}

/// A new rollout: progressing at its first step.
pub fn start(mut rollout: proto::Rollout, plan: &Plan, now: SystemTime) -> Transition {
    rollout.phase = Phase::Pending.into();
    enter(rollout, plan, 0, now, "rollout created".to_owned())
}

/// The current step completed: on to the next one, or done.
pub fn advance(rollout: &proto::Rollout, plan: &Plan, now: SystemTime, reason: String) -> Transition {
    enter(rollout.clone(), plan, rollout.step as usize + 1, now, reason)
}

/// Acts on a verdict of the current step's analysis: a FAIL applies the failure policy;
/// anything else is recorded and changes nothing else.
pub fn on_verdict(
    rollout: &proto::Rollout,
    plan: &Plan,
    policy: FailurePolicy,
    verdict: Verdict,
    now: SystemTime,
) -> Transition {
    let from = rollout.phase();
    let mut next = rollout.clone();
    let failed = verdict.outcome() == Outcome::Fail;
    let reason = verdict.reason.clone();
    next.last_verdict = Some(verdict);
    next.updated_at = Some(time::timestamp(now));
    if !failed || from != Phase::Progressing {
        return Transition { rollout: next, reason: format!("verdict: {reason}"), from };
    }
    let step = rollout.step as usize;
    let reason = match policy {
        FailurePolicy::RollbackToPreviousStage => {
            let previous = plan.previous_weight(step);
            next.weights = plan.weights(previous);
            next.phase = Phase::RolledBack.into();
            format!("analysis failed ({reason}); rolled back to the previous stage, {}", percent(previous))
        }
        FailurePolicy::AbortToZero => {
            next.weights = plan.weights(0);
            next.phase = Phase::RolledBack.into();
            format!("analysis failed ({reason}); all traffic back on stable")
        }
        FailurePolicy::PauseForHuman => {
            next.phase = Phase::Paused.into();
            format!("analysis failed ({reason}); holding the weights for a human: resume to observe again, or abort")
        }
    };
    next.message = reason.clone();
    Transition { rollout: next, reason, from }
}

/// Applies an operator's command.
pub fn command(
    rollout: &proto::Rollout,
    plan: &Plan,
    command: Command,
    why: &str,
    now: SystemTime,
) -> Result<Transition, Illegal> {
    let from = rollout.phase();
    if is_terminal(from) {
        return Err(Illegal(format!("the rollout has ended ({}); nothing to {}", from.as_str_name(), name(command))));
    }
    let by = |what: &str| if why.is_empty() { what.to_owned() } else { format!("{what}: {why}") };
    let mut next = rollout.clone();
    next.updated_at = Some(time::timestamp(now));
    match command {
        Command::Promote { full: true } => {
            next.weights = plan.weights(FULL_WEIGHT);
            next.step = u32::try_from(plan.len()).unwrap_or(u32::MAX);
            next.phase = Phase::Succeeded.into();
            let reason = by("promoted to 100% by an operator");
            next.message = reason.clone();
            Ok(Transition { rollout: next, reason, from })
        }
        Command::Promote { full: false } => Ok(advance(rollout, plan, now, by("promoted by an operator"))),
        Command::Pause if from == Phase::Paused => Err(Illegal("the rollout is already paused".to_owned())),
        Command::Pause => {
            next.phase = Phase::Paused.into();
            let reason = by("paused by an operator");
            next.message = reason.clone();
            Ok(Transition { rollout: next, reason, from })
        }
        Command::Resume if from != Phase::Paused => Err(Illegal("the rollout is not paused".to_owned())),
        Command::Resume if plan.step(rollout.step as usize).is_some_and(|step| step.waits_for_promotion()) => {
            Err(Illegal("the rollout waits at a gate: promote it to go on".to_owned()))
        }
        Command::Resume => {
            // The step starts over: an observation window interrupted by a pause is observed whole.
            let step = rollout.step as usize;
            let mut resumed = enter(next, plan, step, now, by("resumed by an operator"));
            resumed.from = from;
            Ok(resumed)
        }
        Command::Abort => {
            next.weights = plan.weights(0);
            next.phase = Phase::Aborted.into();
            let reason = by("aborted by an operator; all traffic back on stable");
            next.message = reason.clone();
            Ok(Transition { rollout: next, reason, from })
        }
    }
}

/// Enters step `index`: its weights, its start time, and Paused when it waits for a human.
fn enter(mut rollout: proto::Rollout, plan: &Plan, index: usize, now: SystemTime, reason: String) -> Transition {
    let from = rollout.phase();
    rollout.updated_at = Some(time::timestamp(now));
    rollout.step_started_at = Some(time::timestamp(now));
    rollout.last_verdict = None;
    let Some(step) = plan.step(index) else {
        rollout.step = u32::try_from(plan.len()).unwrap_or(u32::MAX);
        rollout.weights = plan.weights(FULL_WEIGHT);
        rollout.phase = Phase::Succeeded.into();
        rollout.message = "all traffic on the new side".to_owned();
        return Transition { rollout, reason: format!("{reason}; rollout succeeded"), from };
    };
    rollout.step = u32::try_from(index).unwrap_or(u32::MAX);
    rollout.weights = step.weights.clone();
    let waits = step.waits_for_promotion();
    rollout.phase = if waits { Phase::Paused } else { Phase::Progressing }.into();
    rollout.message = match step.kind {
        StepKind::Gate | StepKind::Pause { duration: None } => {
            format!("step {index}: {}; waiting for Promote", step.description())
        }
        _ => format!("step {index}: {}", step.description()),
    };
    let reason = format!("{reason}; {}", rollout.message);
    Transition { rollout, reason, from }
}

fn name(command: Command) -> &'static str {
    match command {
        Command::Promote { .. } => "promote",
        Command::Pause => "pause",
        Command::Resume => "resume",
        Command::Abort => "abort",
    }
}

fn percent(weight: u32) -> String {
    format!("{}%", crate::spec::percent(weight))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;

    fn plan(yaml_stages: &[(f64, u64)], policy: proto::FailurePolicy, gate: bool) -> (Plan, FailurePolicy) {
        let spec = proto::RolloutSpec {
            route: "checkout".into(),
            stable_backend: "legacy".into(),
            canary_backend: "k8s".into(),
            strategy: Some(proto::rollout_spec::Strategy::Strangler(proto::StranglerStrategy {
                stages: yaml_stages
                    .iter()
                    .map(|(weight, secs)| proto::Stage {
                        weight: *weight,
                        window: Some(std::time::Duration::from_secs(*secs).into()),
                    })
                    .collect(),
                window: None,
            })),
            analysis: Some(proto::AnalysisSpec::default()),
            failure_policy: policy.into(),
            manual_gate: gate,
            ..Default::default()
        };
        let spec = Spec::from_proto(&spec, "spec").expect("valid spec");
        (Plan::new(&spec), spec.failure_policy)
    }

    fn verdict(outcome: Outcome) -> Verdict {
        Verdict { outcome: outcome.into(), reason: "error rate 8% > 1%".into(), ..Default::default() }
    }

    fn canary(rollout: &proto::Rollout) -> u32 {
        rollout.weights["k8s"]
    }

    #[test]
    fn a_rollout_walks_every_step_to_success() {
        let (plan, _) =
            plan(&[(5.0, 60), (20.0, 60), (100.0, 60)], proto::FailurePolicy::RollbackToPreviousStage, false);
        let now = SystemTime::now();
        let mut rollout = start(proto::Rollout::default(), &plan, now).rollout;
        assert_eq!((rollout.phase(), rollout.step, canary(&rollout)), (Phase::Progressing, 0, 500));
        let mut seen = vec![canary(&rollout)];
        while !is_terminal(rollout.phase()) {
            rollout = advance(&rollout, &plan, now, "step done".into()).rollout;
            seen.push(canary(&rollout));
        }
        assert_eq!(rollout.phase(), Phase::Succeeded);
        assert!(seen.windows(2).all(|pair| pair[0] <= pair[1]), "weights only rise: {seen:?}");
        assert_eq!(canary(&rollout), FULL_WEIGHT);
    }

    #[test]
    fn a_failure_rolls_back_to_the_previous_stage() {
        let (plan, policy) =
            plan(&[(5.0, 60), (20.0, 60), (100.0, 60)], proto::FailurePolicy::RollbackToPreviousStage, false);
        let now = SystemTime::now();
        let mut rollout = start(proto::Rollout::default(), &plan, now).rollout;
        while canary(&rollout) < 2_000 || !plan.step(rollout.step as usize).is_some_and(|s| s.analysis()) {
            rollout = advance(&rollout, &plan, now, "ok".into()).rollout;
        }
        let passed = on_verdict(&rollout, &plan, policy, verdict(Outcome::Pass), now).rollout;
        assert_eq!(passed.phase(), Phase::Progressing);
        let failed = on_verdict(&passed, &plan, policy, verdict(Outcome::Fail), now);
        assert_eq!(failed.rollout.phase(), Phase::RolledBack);
        assert_eq!(canary(&failed.rollout), 500, "back to 5%, not to 0");
        assert!(failed.reason.contains("error rate 8%"), "{}", failed.reason);
    }

    #[test]
    fn the_other_failure_policies_abort_or_hold() {
        let now = SystemTime::now();
        let (plan_abort, abort) = plan(&[(20.0, 60), (100.0, 60)], proto::FailurePolicy::AbortToZero, false);
        let rollout =
            advance(&start(proto::Rollout::default(), &plan_abort, now).rollout, &plan_abort, now, "ok".into()).rollout;
        let aborted = on_verdict(&rollout, &plan_abort, abort, verdict(Outcome::Fail), now).rollout;
        assert_eq!((aborted.phase(), canary(&aborted)), (Phase::RolledBack, 0));

        let (plan_hold, hold) = plan(&[(20.0, 60), (100.0, 60)], proto::FailurePolicy::PauseForHuman, false);
        let rollout =
            advance(&start(proto::Rollout::default(), &plan_hold, now).rollout, &plan_hold, now, "ok".into()).rollout;
        let held = on_verdict(&rollout, &plan_hold, hold, verdict(Outcome::Fail), now).rollout;
        assert_eq!((held.phase(), canary(&held)), (Phase::Paused, 2_000));
        let resumed = command(&held, &plan_hold, Command::Resume, "", now).expect("resume").rollout;
        assert_eq!((resumed.phase(), resumed.step), (Phase::Progressing, held.step));
        assert_eq!(
            on_verdict(&held, &plan_hold, hold, verdict(Outcome::Inconclusive), now).rollout.phase(),
            Phase::Paused
        );
    }

    #[test]
    fn a_gate_waits_for_promote_and_resume_does_not_pass_it() {
        let (plan, _) = plan(&[(50.0, 60), (100.0, 60)], proto::FailurePolicy::RollbackToPreviousStage, true);
        let now = SystemTime::now();
        let mut rollout = start(proto::Rollout::default(), &plan, now).rollout;
        while rollout.phase() == Phase::Progressing {
            rollout = advance(&rollout, &plan, now, "ok".into()).rollout;
        }
        assert_eq!(rollout.phase(), Phase::Paused);
        assert_eq!(canary(&rollout), 5_000, "the gate holds the weight before 100%");
        assert!(command(&rollout, &plan, Command::Resume, "", now).is_err());
        let promoted = command(&rollout, &plan, Command::Promote { full: false }, "checked", now).expect("promote");
        assert_eq!(promoted.rollout.phase(), Phase::Progressing);
        assert_eq!(canary(&promoted.rollout), FULL_WEIGHT);
    }

    #[test]
    fn ended_rollouts_refuse_commands_and_abort_goes_to_zero() {
        let (plan, _) = plan(&[(20.0, 60), (100.0, 60)], proto::FailurePolicy::RollbackToPreviousStage, false);
        let now = SystemTime::now();
        let rollout = start(proto::Rollout::default(), &plan, now).rollout;
        let paused = command(&rollout, &plan, Command::Pause, "lunch", now).expect("pause").rollout;
        assert_eq!(paused.phase(), Phase::Paused);
        assert!(paused.message.contains("lunch"));
        assert!(command(&paused, &plan, Command::Pause, "", now).is_err(), "already paused");
        let aborted = command(&paused, &plan, Command::Abort, "", now).expect("abort").rollout;
        assert_eq!((aborted.phase(), canary(&aborted)), (Phase::Aborted, 0));
        for command_ in [Command::Promote { full: false }, Command::Pause, Command::Resume, Command::Abort] {
            assert!(command(&aborted, &plan, command_, "", now).is_err());
        }
        let full = command(&rollout, &plan, Command::Promote { full: true }, "", now).expect("promote").rollout;
        assert_eq!((full.phase(), canary(&full)), (Phase::Succeeded, FULL_WEIGHT));
    }
}
