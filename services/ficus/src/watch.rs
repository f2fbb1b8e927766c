//! `ficus rollout watch`: follow a rollout's transitions until it ends.
//!
//! The planner streams the rollout's current state and then every transition
//! (`WatchRollout`), and ends the stream after the final one. Three views of that stream:
//! - on a terminal, a live frame redrawn in place (indicatif, which knows the terminal's
//!   width, so long lines that wrap do not break the redraw): phase and step, a progress
//!   bar over the plan's steps, the weights, the last verdict and each check's reason;
//! - elsewhere (a pipe, a CI log), one line per transition, which greps and diffs well;
//! - with `-o json|yaml`, each `RolloutEvent` in the proto3 JSON mapping.
//!
//! A stream that breaks before the rollout ends (a planner restarting, a network blip) is
//! opened again: the planner resends the current state first, so nothing is missed for long.

use std::{
    io::Write,
    time::{Duration, SystemTime},
};

use ficus_proto::planner::v1::{self as proto, planner_client::PlannerClient};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::{
    commands::{
        CliError, Remote, Terminal,
        rollout::{self, ended_badly, has_ended},
    },
    output::{self, Format},
};

/// How long the watch keeps trying to reopen a broken stream before giving up.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

/// Pause between two attempts to reopen the stream.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// How often the live view refreshes the time spent in the current step.
const REFRESH: Duration = Duration::from_secs(1);

/// Follows rollout `id` until it ends; an error when it ended rolled back, aborted or failed.
/// With a `wait`, a rollout not created yet (or a planner not up yet) is waited for that
/// long, so a watcher can start before whoever creates the rollout.
pub async fn watch(
    planner: &Remote,
    id: &str,
    wait: Duration,
    format: Format,
    out: &mut (dyn Write + Send),
    terminal: Terminal,
) -> Result<(), CliError> {
    wait_for_creation(planner, id, wait).await?;
    let mut view = match format {
        Format::Table if terminal.interactive => View::Live(Live::new()),
        Format::Table => View::Lines { last: None },
        format => View::Machine(format),
    };
    let mut api = PlannerClient::new(planner.channel.clone());
    let mut last: Option<proto::Rollout> = None;
    let mut broken_since: Option<Instant> = None;
    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        let opened = api.watch_rollout(proto::WatchRolloutRequest { id: id.to_owned() }).await;
        let mut stream = match opened {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                let error = planner.error(status);
                retry_or_fail(error, last.is_some(), &mut broken_since).await?;
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = refresh.tick(), if matches!(view, View::Live(_)) => {
                    if let (View::Live(live), Some(rollout)) = (&view, &last) {
                        live.draw(rollout, SystemTime::now());
                    }
                    continue;
                }
            };
            match message {
                Ok(Some(event)) => {
                    broken_since = None;
                    let Some(rollout) = event.rollout.clone() else { continue };
                    view.show(out, &event, &rollout)?;
                    if has_ended(rollout.phase()) {
                        view.finish();
                        return outcome(&rollout);
                    }
                    last = Some(rollout);
                }
                // The stream ended or broke before the rollout did: open it again.
                Ok(None) => break,
                Err(status) => {
                    retry_or_fail(planner.error(status), true, &mut broken_since).await?;
                    break;
                }
            }
        }
        if broken_since.is_some_and(|since| since.elapsed() > RECONNECT_FOR) {
            view.finish();
            return Err(CliError::Server(format!(
                "the planner at {} stopped streaming rollout `{id}`",
                planner.address
            )));
        }
        broken_since.get_or_insert_with(Instant::now);
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Returns once rollout `id` exists, polling while it is missing or the planner is
/// unreachable, for at most `wait`; the last error after that.
async fn wait_for_creation(planner: &Remote, id: &str, wait: Duration) -> Result<(), CliError> {
    let deadline = Instant::now() + wait;
    let mut api = PlannerClient::new(planner.channel.clone());
    loop {
        let status = match api.get_rollout(proto::GetRolloutRequest { id: id.to_owned() }).await {
            Ok(_) => return Ok(()),
            Err(status) => status,
        };
        let waitable = matches!(status.code(), tonic::Code::NotFound | tonic::Code::Unavailable);
        if !waitable || Instant::now() >= deadline {
            return Err(planner.error(status));
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Waits before reopening a broken stream, or gives up: at once when the watch never got
/// a first event (nothing to resume) or the server refused it, after [`RECONNECT_FOR`]
/// when the planner stays unreachable.
async fn retry_or_fail(error: CliError, resumable: bool, broken_since: &mut Option<Instant>) -> Result<(), CliError> {
    let since = *broken_since.get_or_insert_with(Instant::now);
    let transient = matches!(error, CliError::Unreachable { .. });
    if !resumable || !transient || since.elapsed() > RECONNECT_FOR {
        return Err(error);
    }
    tokio::time::sleep(RECONNECT_PAUSE).await;
    Ok(())
}

/// The command's result once the rollout has ended.
fn outcome(rollout: &proto::Rollout) -> Result<(), CliError> {
    let phase = rollout.phase();
    if ended_badly(phase) {
        return Err(CliError::RolloutEnded {
            id: rollout.id.clone(),
            phase: phase.as_str_name(),
            message: rollout.message.clone(),
        });
    }
    Ok(())
}

enum View {
    Live(Live),
    /// One line per transition; `last` is what the previous line showed, see [`line_key`].
    Lines {
        last: Option<String>,
    },
    Machine(Format),
}

impl View {
    fn show(
        &mut self,
        out: &mut (dyn Write + Send),
        event: &proto::RolloutEvent,
        rollout: &proto::Rollout,
    ) -> std::io::Result<()> {
        match self {
            Self::Live(live) => {
                live.draw(rollout, SystemTime::now());
                Ok(())
            }
            Self::Lines { last } => {
                let key = line_key(rollout);
                if last.as_ref() == Some(&key) {
                    return Ok(());
                }
                *last = Some(key);
                writeln!(out, "{}", line(event, rollout))?;
                // Each line is worth seeing when it happens, not when a buffer fills.
                out.flush()
            }
            Self::Machine(format) => {
                output::machine_item(out, *format, event)?;
                out.flush()
            }
        }
    }

    fn finish(&mut self) {
        if let Self::Live(live) = self {
            // Leaves the last frame on screen as it is, the rollout's final state; `finish`
            // would fill the bar even for a rollout that was rolled back halfway.
            live.bar.abandon();
        }
    }
}

/// The live view: a header above the bar, details below it.
struct Live {
    bar: ProgressBar,
}

impl Live {
    fn new() -> Self {
        let style = ProgressStyle::with_template("{prefix}\n[{bar:40}] {pos}/{len} steps\n{msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stdout()).with_style(style);
        Self { bar }
    }

    fn draw(&self, rollout: &proto::Rollout, now: SystemTime) {
        let (total, done) = progress(rollout);
        self.bar.set_length(total);
        self.bar.set_position(done);
        let (header, body) = frame(rollout, now);
        self.bar.set_prefix(header);
        self.bar.set_message(body);
    }
}

/// Steps of the plan, and how many are behind the rollout: all of them once it succeeded.
pub fn progress(rollout: &proto::Rollout) -> (u64, u64) {
    let total = rollout.plan.as_ref().map_or(0, |plan| plan.steps.len()) as u64;
    let done = match rollout.phase() {
        proto::Phase::Succeeded => total,
        _ => u64::from(rollout.step).min(total),
    };
    (total.max(1), done)
}

/// The live frame of a rollout at `now`: the lines above the progress bar and those below.
pub fn frame(rollout: &proto::Rollout, now: SystemTime) -> (String, String) {
    let spec = rollout.spec.clone().unwrap_or_default();
    let mut in_step = String::new();
    if !has_ended(rollout.phase())
        && let Some(started) = rollout.step_started_at.as_ref().and_then(ficus_proto::time::system_time)
    {
        let elapsed = now.duration_since(started).unwrap_or_default();
        let elapsed = output::duration(Duration::from_secs(elapsed.as_secs()));
        let planned = current_step(rollout).and_then(|step| step.duration.as_ref()).map(output::proto_duration);
        in_step = match planned {
            Some(planned) if planned != "0s" => format!("  ({elapsed} of {planned})"),
            _ => format!("  ({elapsed})"),
        };
    }
    let description = match rollout::step_description(rollout) {
        "" => String::new(),
        description => format!(": {description}"),
    };
    let header = format!(
        "rollout {}  ·  route {}  ·  {}\n{}  step {}{description}{in_step}",
        rollout.id,
        rollout::sides_of(&spec),
        rollout::strategy(rollout),
        rollout.phase().as_str_name(),
        rollout::step_of(rollout),
    );
    let mut body = format!("weights  {}", rollout::weights_of(rollout));
    match &rollout.last_verdict {
        Some(verdict) => {
            body.push_str(&format!("\nverdict  {}", rollout::verdict_line(verdict)));
            for check in rollout::check_lines(verdict) {
                body.push_str(&format!("\n  {check}"));
            }
        }
        None if has_ended(rollout.phase()) => body.push_str("\nverdict  -"),
        None => body.push_str("\nverdict  none yet"),
    }
    if !rollout.message.is_empty() {
        body.push_str(&format!("\nmessage  {}", rollout.message));
    }
    (header, body)
}

fn current_step(rollout: &proto::Rollout) -> Option<&proto::PlannedStep> {
    let index = usize::try_from(rollout.step).ok()?;
    rollout.plan.as_ref()?.steps.get(index)
}

/// What a line shows that a reader of a log cares about: phase, step, weights and the
/// verdict's outcome. Each new verdict is a transition to the planner (it is stored), but a
/// day-long stage judged every 5 seconds must not print seventeen thousand identical lines.
pub fn line_key(rollout: &proto::Rollout) -> String {
    let outcome = rollout.last_verdict.as_ref().map_or("-", |verdict| verdict.outcome().as_str_name());
    format!("{:?} {} {} {outcome}", rollout.phase(), rollout.step, rollout::weights_of(rollout))
}

/// One transition on one line, for logs: phase, step, weights, verdict (with the reasons of
/// the checks that did not pass) and why it happened.
pub fn line(event: &proto::RolloutEvent, rollout: &proto::Rollout) -> String {
    let description = match rollout::step_description(rollout) {
        "" => String::new(),
        description => format!(" ({description})"),
    };
    let mut text = format!(
        "{} {} step {}{description} weights {}",
        rollout.id,
        rollout.phase().as_str_name(),
        rollout::step_of(rollout),
        rollout::weights_of(rollout),
    );
    if let Some(verdict) = &rollout.last_verdict {
        text.push_str(&format!(" verdict {}", rollout::verdict_line(verdict)));
        let failing: Vec<String> = verdict
            .checks
            .iter()
            .filter(|check| check.outcome() != ficus_proto::analysis::v1::Outcome::Pass)
            .map(|check| format!("{}: {}", check.name, check.reason))
            .collect();
        if !failing.is_empty() {
            text.push_str(&format!(" [{}]", failing.join("; ")));
        }
    }
    let reason = if event.reason.is_empty() { &rollout.message } else { &event.reason };
    // The planner's reason for a new verdict repeats the verdict shown just before.
    let repeats_verdict = rollout
        .last_verdict
        .as_ref()
        .is_some_and(|verdict| reason.strip_prefix("verdict: ") == Some(verdict.reason.as_str()));
    if !reason.is_empty() && !repeats_verdict {
        text.push_str(&format!(" - {reason}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ficus_proto::analysis::v1 as analysis;

    use super::*;

    fn rollout() -> proto::Rollout {
        let step = |index: u32, description: &str, weight: f64, secs: u64| proto::PlannedStep {
            index,
            description: description.into(),
            canary_weight: weight,
            duration: Some(Duration::from_secs(secs).into()),
            ..Default::default()
        };
        proto::Rollout {
            id: "checkout-1".into(),
            spec: Some(proto::RolloutSpec {
                route: "checkout".into(),
                stable_backend: "legacy".into(),
                canary_backend: "k8s".into(),
                ..Default::default()
            }),
            plan: Some(proto::Plan {
                steps: vec![
                    step(0, "set canary weight to 20%", 20.0, 0),
                    step(1, "observe 1h with analysis", 20.0, 3_600),
                    step(2, "set canary weight to 100%", 100.0, 0),
                ],
                minimum_duration: Some(Duration::from_secs(3_600).into()),
            }),
            phase: proto::Phase::Progressing.into(),
            step: 1,
            weights: HashMap::from([("legacy".to_owned(), 8_000), ("k8s".to_owned(), 2_000)]),
            last_verdict: Some(analysis::Verdict {
                outcome: analysis::Outcome::Fail.into(),
                score: 50.0,
                reason: "error-rate failed".into(),
                checks: vec![
                    analysis::CheckResult {
                        name: "error-rate".into(),
                        outcome: analysis::Outcome::Fail.into(),
                        rule: "canary <= 0.01".into(),
                        reason: "canary 0.05 above 0.01".into(),
                        ..Default::default()
                    },
                    analysis::CheckResult {
                        name: "p99".into(),
                        outcome: analysis::Outcome::Pass.into(),
                        reason: "within 1.5x".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            message: "observing".into(),
            step_started_at: Some(ficus_proto::time::timestamp(SystemTime::UNIX_EPOCH)),
            ..Default::default()
        }
    }

    #[test]
    fn a_transition_is_one_line_with_the_failing_checks() {
        let rollout = rollout();
        let event = proto::RolloutEvent { rollout: Some(rollout.clone()), reason: "judged".into(), from_phase: 2 };
        assert_eq!(
            line(&event, &rollout),
            "checkout-1 PROGRESSING step 2/3 (observe 1h with analysis) weights legacy=80% k8s=20% \
             verdict FAIL (score 50): error-rate failed [error-rate: canary 0.05 above 0.01] - judged"
        );
    }

    #[test]
    fn a_new_verdict_with_the_same_outcome_is_not_a_new_line() {
        let first = rollout();
        let mut again = first.clone();
        if let Some(verdict) = again.last_verdict.as_mut() {
            verdict.score = 40.0;
            verdict.sequence = 2;
        }
        assert_eq!(line_key(&first), line_key(&again));
        again.step = 2;
        assert_ne!(line_key(&first), line_key(&again));
    }

    #[test]
    fn the_live_frame_shows_step_time_weights_and_every_check() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(754);
        let (header, body) = frame(&rollout(), now);
        assert!(header.ends_with("PROGRESSING  step 2/3: observe 1h with analysis  (12m34s of 1h)"), "{header}");
        assert_eq!(
            body,
            "weights  legacy=80% k8s=20%\nverdict  FAIL (score 50): error-rate failed\n  \
             FAIL error-rate [canary <= 0.01]: canary 0.05 above 0.01\n  ok   p99: within 1.5x\nmessage  observing"
        );
    }

    #[test]
    fn progress_counts_the_steps_behind_and_all_once_succeeded() {
        let mut rollout = rollout();
        assert_eq!(progress(&rollout), (3, 1));
        rollout.phase = proto::Phase::Succeeded.into();
        rollout.step = 3;
        assert_eq!(progress(&rollout), (3, 3));
        let event = proto::RolloutEvent { rollout: Some(rollout.clone()), reason: String::new(), from_phase: 2 };
        assert!(
            line(&event, &rollout).starts_with("checkout-1 SUCCEEDED step 3/3 weights "),
            "past the end reads as the last step"
        );
    }
}
