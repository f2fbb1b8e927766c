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
    spec::{DeadlineAction, Deadlines, FULL_WEIGHT, FailurePolicy},
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

/// Most decisions a rollout keeps in its history; the oldest are dropped beyond it.
pub const HISTORY_LIMIT: usize = 256;

/// Whether a phase is final.
pub fn is_terminal(phase: Phase) -> bool {
    matches!(phase, Phase::Succeeded | Phase::RolledBack | Phase::Aborted | Phase::Failed)
}

/// A new rollout: progressing at its first step.
pub fn start(rollout: proto::Rollout, plan: &Plan, now: SystemTime) -> Transition {
    let mut before = rollout;
    before.phase = Phase::Pending.into();
    let (next, reason) = enter(before.clone(), plan, 0, now, "rollout created".to_owned());
    decide(&before, next, reason, None, now)
}

/// The current step completed: on to the next one, or done. Also an operator's Promote,
/// which leaves a stage that was stepped back to.
pub fn advance(rollout: &proto::Rollout, plan: &Plan, now: SystemTime, reason: String) -> Transition {
    let mut next = rollout.clone();
    next.stepped_back_from = 0;
    let (next, reason) = enter(next, plan, rollout.step as usize + 1, now, reason);
    decide(rollout, next, reason, rollout.last_verdict.clone(), now)
}

/// The current step's time is over and, when analysed, it passed: on to the next step,
/// unless the stage is being judged again after a later one failed. Such a stage is held
/// for an operator: it passing again says the failure came with the higher weight, which a
/// human should look at before the rollout climbs back to it.
pub fn step_done(rollout: &proto::Rollout, plan: &Plan, now: SystemTime, reason: String) -> Transition {
    if rollout.stepped_back_from == 0 {
        return advance(rollout, plan, now, reason);
    }
    let mut next = rollout.clone();
    next.phase = Phase::Paused.into();
    next.updated_at = Some(time::timestamp(now));
    let weight = plan.step(rollout.step as usize).map_or(0, |step| step.weight);
    next.message = format!(
        "{reason}; the stage passed again after analysis failed at {}: holding at {} until an operator \
         resumes (judge it again, then go on) or aborts",
        percent(rollout.stepped_back_from),
        percent(weight)
    );
    // It passed: once resumed it is judged once more and then goes on.
    next.stepped_back_from = 0;
    let reason = next.message.clone();
    decide(rollout, next, reason, rollout.last_verdict.clone(), now)
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
    let mut next = rollout.clone();
    next.last_verdict = Some(verdict.clone());
    next.updated_at = Some(time::timestamp(now));
    if verdict.outcome() != Outcome::Fail || rollout.phase() != Phase::Progressing {
        let reason = format!("verdict: {}", verdict.reason);
        return decide(rollout, next, reason, Some(verdict), now);
    }
    let why = format!("analysis failed ({})", verdict.reason);
    fail(rollout, next, plan, policy, why, Some(verdict), now)
}

/// A step missed one of the spec's deadlines (`what` says which): the spec's deadline
/// action is taken.
pub fn on_deadline(
    rollout: &proto::Rollout,
    plan: &Plan,
    deadlines: &Deadlines,
    policy: FailurePolicy,
    what: String,
    now: SystemTime,
) -> Transition {
    let mut next = rollout.clone();
    next.updated_at = Some(time::timestamp(now));
    let reason = match deadlines.action {
        DeadlineAction::Pause => {
            next.phase = Phase::Paused.into();
            format!("{what}; holding the weights for an operator: resume to observe the step again, or abort")
        }
        DeadlineAction::Abort => {
            next.weights = plan.weights(0);
            next.phase = Phase::Aborted.into();
            format!("{what}; aborted: all traffic back on stable")
        }
        DeadlineAction::RollBack => return fail(rollout, next, plan, policy, what, rollout.last_verdict.clone(), now),
    };
    next.message = reason.clone();
    decide(rollout, next, reason, rollout.last_verdict.clone(), now)
}

/// The analysis service refused the step's checks, so the rollout cannot be judged: it
/// fails where it is, as no verdict will ever come.
pub fn unjudgeable(rollout: &proto::Rollout, why: String, now: SystemTime) -> Transition {
    let mut next = rollout.clone();
    next.phase = Phase::Failed.into();
    next.updated_at = Some(time::timestamp(now));
    next.message = why.clone();
    decide(rollout, next, why, None, now)
}

/// Traffic confirmed the rollout's weights at route `generation`.
pub fn applied(rollout: &proto::Rollout, generation: u64) -> Transition {
    let mut next = rollout.clone();
    next.weights_pending = false;
    next.applied_generation = generation;
    next.pending_reason.clear();
    let reason = format!("weights applied at route generation {generation}");
    Transition { rollout: next, reason, from: rollout.phase() }
}

/// The ended rollout's final weights can never be applied (its route is gone, or it
/// cannot be read), for `why`: the planner stops trying, and says why.
pub fn abandoned(rollout: &proto::Rollout, why: String) -> Transition {
    let mut next = rollout.clone();
    next.weights_pending = false;
    next.pending_reason = why.clone();
    Transition { rollout: next, reason: why, from: rollout.phase() }
}

/// The rollout's weights could not be applied, for `why`; the planner keeps trying.
pub fn unapplied(rollout: &proto::Rollout, why: String) -> Transition {
    let mut next = rollout.clone();
    next.pending_reason = why.clone();
    Transition { rollout: next, reason: why, from: rollout.phase() }
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
    let reason = match command {
        Command::Promote { full: true } => {
            next.weights = plan.weights(FULL_WEIGHT);
            next.step = u32::try_from(plan.len()).unwrap_or(u32::MAX);
            next.phase = Phase::Succeeded.into();
            next.stepped_back_from = 0;
            by("promoted to 100% by an operator")
        }
        Command::Promote { full: false } => return Ok(advance(rollout, plan, now, by("promoted by an operator"))),
        Command::Pause if from == Phase::Paused => return Err(Illegal("the rollout is already paused".to_owned())),
        Command::Pause => {
            next.phase = Phase::Paused.into();
            by("paused by an operator")
        }
        Command::Resume if from != Phase::Paused => return Err(Illegal("the rollout is not paused".to_owned())),
        Command::Resume if plan.step(rollout.step as usize).is_some_and(|step| step.waits_for_promotion()) => {
            return Err(Illegal("the rollout waits at a gate: promote it to go on".to_owned()));
        }
        Command::Resume => {
            // The step starts over: an observation window interrupted by a pause is observed
            // whole. A stage being judged again after a step back is still that: paused
            // before it passed, it is held again when it does.
            let (resumed, reason) = enter(next, plan, rollout.step as usize, now, by("resumed by an operator"));
            return Ok(decide(rollout, resumed, reason, None, now));
        }
        Command::Abort => {
            next.weights = plan.weights(0);
            next.phase = Phase::Aborted.into();
            by("aborted by an operator; all traffic back on stable")
        }
    };
    next.message = reason.clone();
    Ok(decide(rollout, next, reason, None, now))
}

/// The failure policy applied to `before`, whose step failed for `why`; `next` is
/// `before` with the failure's own record (verdict, time) already in.
fn fail(
    before: &proto::Rollout,
    mut next: proto::Rollout,
    plan: &Plan,
    policy: FailurePolicy,
    why: String,
    verdict: Option<Verdict>,
    now: SystemTime,
) -> Transition {
    let step = before.step as usize;
    let reason = match policy {
        FailurePolicy::RollbackToPreviousStage => {
            let previous = plan.previous_weight(step);
            let again = (previous > 0).then(|| plan.judged_step_at(previous, step)).flatten();
            if let Some(index) = again {
                next.stepped_back_from = plan.step(step).map_or(0, |step| step.weight);
                let reason =
                    format!("{why}; stepped back to the previous stage, {}, to judge it again", percent(previous));
                let (mut stepped, reason) = enter(next, plan, index, now, reason);
                stepped.message = reason.clone();
                return decide(before, stepped, reason, verdict, now);
            }
            next.weights = plan.weights(0);
            next.phase = Phase::RolledBack.into();
            if previous > 0 {
                format!(
                    "{why}; nothing judges the previous stage, {}, so all traffic is back on stable",
                    percent(previous)
                )
            } else {
                format!("{why}; rolled back: all traffic on stable")
            }
        }
        FailurePolicy::AbortToZero => {
            next.weights = plan.weights(0);
            next.phase = Phase::RolledBack.into();
            format!("{why}; all traffic back on stable")
        }
        FailurePolicy::PauseForHuman => {
            next.phase = Phase::Paused.into();
            format!("{why}; holding the weights for a human: resume to observe again, or abort")
        }
    };
    next.message = reason.clone();
    decide(before, next, reason, verdict, now)
}

/// Finishes a decision that takes `before` to `next`: weights that changed are pending
/// until traffic confirms them, and a change of phase, step or weights joins the history
/// with its reason and the verdict behind it.
fn decide(
    before: &proto::Rollout,
    mut next: proto::Rollout,
    reason: String,
    verdict: Option<Verdict>,
    now: SystemTime,
) -> Transition {
    if next.weights != before.weights {
        next.weights_pending = true;
        next.pending_reason.clear();
    }
    if next.phase != before.phase || next.step != before.step || next.weights != before.weights {
        next.history.push(proto::RolloutTransition {
            at: Some(time::timestamp(now)),
            from_phase: before.phase,
            to_phase: next.phase,
            step: next.step,
            weights: next.weights.clone(),
            reason: reason.clone(),
            verdict,
        });
        let excess = next.history.len().saturating_sub(HISTORY_LIMIT);
        next.history.drain(..excess);
    }
    Transition { rollout: next, reason, from: before.phase() }
}

/// Enters step `index`: its weights, its start time, and Paused when it waits for a human.
/// Returns the rollout and the reason, completed with what the step is.
fn enter(
    mut rollout: proto::Rollout,
    plan: &Plan,
    index: usize,
    now: SystemTime,
    reason: String,
) -> (proto::Rollout, String) {
    rollout.updated_at = Some(time::timestamp(now));
    rollout.step_started_at = Some(time::timestamp(now));
    rollout.last_verdict = None;
    let Some(step) = plan.step(index) else {
        rollout.step = u32::try_from(plan.len()).unwrap_or(u32::MAX);
        rollout.weights = plan.weights(FULL_WEIGHT);
        rollout.phase = Phase::Succeeded.into();
        rollout.stepped_back_from = 0;
        rollout.message = "all traffic on the new side".to_owned();
        return (rollout, format!("{reason}; rollout succeeded"));
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
    (rollout, reason)
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
    use crate::{plan::Step, spec::Spec};

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
                        progress_deadline: None,
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

    /// The rollout at its first analysed step at `weight`.
    fn observing_at(plan: &Plan, weight: u32) -> proto::Rollout {
        let now = SystemTime::now();
        let mut rollout = start(proto::Rollout::default(), plan, now).rollout;
        while canary(&rollout) < weight || !plan.step(rollout.step as usize).is_some_and(|s| s.analysis()) {
            rollout = advance(&rollout, plan, now, "ok".into()).rollout;
        }
        rollout
    }

    #[test]
    fn a_failure_steps_back_and_judges_the_previous_stage_again() {
        let (plan, policy) =
            plan(&[(5.0, 60), (20.0, 60), (100.0, 60)], proto::FailurePolicy::RollbackToPreviousStage, false);
        let now = SystemTime::now();
        let rollout = observing_at(&plan, 2_000);
        let passed = on_verdict(&rollout, &plan, policy, verdict(Outcome::Pass), now).rollout;
        assert_eq!(passed.phase(), Phase::Progressing);
        let failed = on_verdict(&passed, &plan, policy, verdict(Outcome::Fail), now);
        let back = failed.rollout;
        assert_eq!((back.phase(), canary(&back), back.stepped_back_from), (Phase::Progressing, 500, 2_000));
        assert!(plan.step(back.step as usize).is_some_and(Step::analysis), "the 5% stage is judged again");
        assert!(back.weights_pending, "new weights wait for traffic's confirmation");
        assert!(back.last_verdict.is_none(), "a fresh analysis run");
        assert!(failed.reason.contains("error rate 8%") && failed.reason.contains("5%"), "{}", failed.reason);
        let step_back = back.history.last().expect("the step back is in the history");
        assert_eq!((step_back.from_phase(), step_back.to_phase()), (Phase::Progressing, Phase::Progressing));
        assert_eq!(step_back.verdict.as_ref().map(Verdict::outcome), Some(Outcome::Fail));

        // Still faulty at 5%: back to 0, the rollout ends.
        let to_zero = on_verdict(&back, &plan, policy, verdict(Outcome::Fail), now).rollout;
        assert_eq!((to_zero.phase(), canary(&to_zero)), (Phase::RolledBack, 0));
        let steps: Vec<u32> = to_zero.history.iter().map(|entry| entry.weights["k8s"]).collect();
        assert_eq!(steps.last().copied(), Some(0));
        assert!(steps.windows(2).any(|pair| pair == [2_000, 500]), "each step back is recorded: {steps:?}");

        // An operator's pause while 5% is judged again keeps it a stage judged again.
        let paused = command(&back, &plan, Command::Pause, "", now).expect("pause").rollout;
        let resumed = command(&paused, &plan, Command::Resume, "", now).expect("resume").rollout;
        assert_eq!(resumed.stepped_back_from, 2_000, "still judged again after a pause");
        assert_eq!(step_done(&resumed, &plan, now, "window over".into()).rollout.phase(), Phase::Paused);

        // Passing at 5% instead holds there for an operator; Resume judges it again, then goes on.
        let held = step_done(&back, &plan, now, "window over".into()).rollout;
        assert_eq!((held.phase(), canary(&held)), (Phase::Paused, 500));
        assert!(held.message.contains("20%"), "{}", held.message);
        let resumed = command(&held, &plan, Command::Resume, "", now).expect("resume").rollout;
        assert_eq!((resumed.phase(), resumed.step, resumed.stepped_back_from), (Phase::Progressing, held.step, 0));
        let onward = step_done(&resumed, &plan, now, "window over".into()).rollout;
        assert!(onward.step > resumed.step, "after a resume a passing stage goes on");
    }

    #[test]
    fn a_failure_with_no_stage_to_judge_again_rolls_back_to_zero() {
        let (plan, policy) = plan(&[(20.0, 60), (100.0, 60)], proto::FailurePolicy::RollbackToPreviousStage, false);
        let rollout = observing_at(&plan, 2_000);
        let failed = on_verdict(&rollout, &plan, policy, verdict(Outcome::Fail), SystemTime::now()).rollout;
        assert_eq!((failed.phase(), canary(&failed)), (Phase::RolledBack, 0));
    }

    #[test]
    fn each_deadline_action_is_taken() {
        let (plan, policy) =
            plan(&[(5.0, 60), (20.0, 60), (100.0, 60)], proto::FailurePolicy::RollbackToPreviousStage, false);
        let now = SystemTime::now();
        let rollout = observing_at(&plan, 2_000);
        let deadlines = |action| Deadlines { progress: None, inconclusive: None, action };
        let missed = |action| on_deadline(&rollout, &plan, &deadlines(action), policy, "too quiet".into(), now);
        let paused = missed(DeadlineAction::Pause);
        assert_eq!((paused.rollout.phase(), canary(&paused.rollout)), (Phase::Paused, 2_000));
        assert!(paused.reason.contains("too quiet"));
        let aborted = missed(DeadlineAction::Abort).rollout;
        assert_eq!((aborted.phase(), canary(&aborted)), (Phase::Aborted, 0));
        let rolled = missed(DeadlineAction::RollBack).rollout;
        assert_eq!((rolled.phase(), canary(&rolled), rolled.stepped_back_from), (Phase::Progressing, 500, 2_000));
    }

    #[test]
    fn the_history_keeps_decisions_not_every_verdict() {
        let (plan, policy) = plan(&[(5.0, 60), (100.0, 60)], proto::FailurePolicy::RollbackToPreviousStage, false);
        let now = SystemTime::now();
        let mut rollout = observing_at(&plan, 500);
        let before = rollout.history.len();
        for _ in 0..HISTORY_LIMIT * 2 {
            rollout = on_verdict(&rollout, &plan, policy, verdict(Outcome::Inconclusive), now).rollout;
        }
        assert_eq!(rollout.history.len(), before, "a verdict that changes nothing is no decision");
        for _ in 0..HISTORY_LIMIT {
            rollout = command(&rollout, &plan, Command::Pause, "", now).expect("pause").rollout;
            rollout = command(&rollout, &plan, Command::Resume, "", now).expect("resume").rollout;
        }
        assert_eq!(rollout.history.len(), HISTORY_LIMIT, "bounded");
        let applied = applied(&rollout, 42).rollout;
        assert_eq!((applied.weights_pending, applied.applied_generation), (false, 42));
        assert_eq!(applied.history.len(), rollout.history.len());
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
