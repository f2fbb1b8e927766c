//! `ficus rollout`: start, inspect, follow and steer rollouts through the planner.

use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use ficus_proto::{
    analysis::v1::{Outcome, Verdict},
    planner::v1::{self as proto, Phase, planner_client::PlannerClient, rollout_spec::Strategy},
};

use super::{CliError, Globals, Remote, Service, Terminal};
use crate::{
    output::{self, Fields, Format, Table},
    spec_file, watch,
};

/// `ficus rollout ...`.
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout from a spec file.
    ///
    /// The file is a `RolloutSpec` in YAML or JSON (the proto3 JSON mapping); durations may
    /// also be written `24h`, `30m`, `14d`. With `--id`, applying the same spec again
    /// returns the existing rollout instead of starting a second one.
    #[command(
        after_help = "Examples:\n  ficus rollout apply -f examples/strangler.yaml\n  ficus rollout apply -f examples/canary.yaml --id checkout-v2\n  cat spec.yaml | ficus rollout apply -f -"
    )]
    Apply {
        /// The rollout spec; `-` for stdin.
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
        /// Rollout id (lowercase letters, digits, '-', '.'); generated from the route when unset.
        #[arg(long)]
        id: Option<String>,
    },
    /// Show one rollout: phase, step, weights, last verdict and its plan.
    #[command(after_help = "Examples:\n  ficus rollout get checkout-v2\n  ficus rollout get checkout-v2 -o yaml")]
    Get {
        /// Rollout id.
        id: String,
    },
    /// List rollouts, newest first.
    #[command(after_help = "Examples:\n  ficus rollout list\n  ficus rollout list --route checkout --active")]
    List {
        /// Only rollouts of this route.
        #[arg(long)]
        route: Option<String>,
        /// Only rollouts that have not ended.
        #[arg(long)]
        active: bool,
    },
    /// Follow a rollout live until it ends.
    ///
    /// On a terminal the view is redrawn in place: phase, step, a progress bar over the
    /// plan's steps, weights, and the last verdict with each check's reason. Otherwise (a
    /// pipe, CI) it prints one line per transition; with `-o json` one JSON event per line.
    /// Exits 0 when the rollout succeeded, 1 when it was rolled back, aborted or failed.
    #[command(
        after_help = "Examples:\n  ficus rollout watch checkout-v2\n  ficus rollout watch checkout-v2 | tee rollout.log\n  ficus rollout watch checkout-v2 -o json | jq .rollout.phase"
    )]
    Watch {
        /// Rollout id.
        id: String,
        /// Wait this long for the rollout to be created and the planner to answer,
        /// e.g. `5m` for a watcher that starts before the rollout does.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s", value_name = "DURATION")]
        wait: Duration,
    },
    /// Pass the current gate or pause; with `--full`, go straight to 100%.
    #[command(
        after_help = "Examples:\n  ficus rollout promote checkout-v2\n  ficus rollout promote checkout-v2 --full --reason \"hotfix verified\""
    )]
    Promote {
        /// Rollout id.
        id: String,
        /// Skip every remaining step and switch to 100% now.
        #[arg(long)]
        full: bool,
        /// Why, kept in the rollout's record.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Hold the rollout at its current weights.
    #[command(after_help = "Examples:\n  ficus rollout pause checkout-v2 --reason \"investigating p99\"")]
    Pause {
        /// Rollout id.
        id: String,
        /// Why, kept in the rollout's record.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Continue a paused rollout.
    #[command(after_help = "Examples:\n  ficus rollout resume checkout-v2")]
    Resume {
        /// Rollout id.
        id: String,
        /// Why, kept in the rollout's record.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Send all traffic back to the stable backend and end the rollout.
    #[command(after_help = "Examples:\n  ficus rollout abort checkout-v2 --reason \"errors in checkout\"")]
    Abort {
        /// Rollout id.
        id: String,
        /// Why, kept in the rollout's record.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Runs a `rollout` command.
pub async fn run(
    globals: &Globals,
    command: RolloutCommand,
    out: &mut (dyn Write + Send),
    terminal: Terminal,
) -> Result<(), CliError> {
    // The spec is read before any call, so a bad file is reported as such even with no
    // planner running.
    let spec = match &command {
        RolloutCommand::Apply { file, .. } => Some(spec_file::read(file)?),
        _ => None,
    };
    let planner = Remote::connect(Service::Planner, globals.planner(), &globals.credentials()?)?;
    let mut api = PlannerClient::new(planner.channel.clone());
    let rollout = match command {
        RolloutCommand::Apply { id, .. } => {
            let request = proto::CreateRolloutRequest { spec, id: id.unwrap_or_default() };
            let rollout = api.create_rollout(request).await.map_err(|status| planner.error(status))?.into_inner();
            if globals.output == Format::Table {
                writeln!(out, "rollout `{}` applied: {}", rollout.id, summary(&rollout))?;
                writeln!(out, "follow it with: ficus rollout watch {}", rollout.id)?;
                return Ok(());
            }
            rollout
        }
        RolloutCommand::Get { id } => {
            let rollout = api
                .get_rollout(proto::GetRolloutRequest { id })
                .await
                .map_err(|status| planner.error(status))?
                .into_inner();
            if globals.output == Format::Table {
                write!(out, "{}", details(&rollout))?;
                return Ok(());
            }
            rollout
        }
        RolloutCommand::List { route, active } => {
            let request = proto::ListRolloutsRequest { route: route.unwrap_or_default(), active_only: active };
            let list = api.list_rollouts(request).await.map_err(|status| planner.error(status))?.into_inner();
            match globals.output {
                Format::Table => write!(out, "{}", list_table(&list.rollouts, SystemTime::now()))?,
                format => output::machine(out, format, &list)?,
            }
            return Ok(());
        }
        RolloutCommand::Watch { id, wait } => {
            return watch::watch(&planner, &id, wait, globals.output, out, terminal).await;
        }
        RolloutCommand::Promote { id, full, reason } => {
            let request = proto::PromoteRequest { id, full, reason: reason.unwrap_or_default() };
            api.promote(request).await.map_err(|status| planner.error(status))?.into_inner()
        }
        RolloutCommand::Pause { id, reason } => {
            let request = proto::PauseRequest { id, reason: reason.unwrap_or_default() };
            api.pause(request).await.map_err(|status| planner.error(status))?.into_inner()
        }
        RolloutCommand::Resume { id, reason } => {
            let request = proto::ResumeRequest { id, reason: reason.unwrap_or_default() };
            api.resume(request).await.map_err(|status| planner.error(status))?.into_inner()
        }
        RolloutCommand::Abort { id, reason } => {
            let request = proto::AbortRequest { id, reason: reason.unwrap_or_default() };
            api.abort(request).await.map_err(|status| planner.error(status))?.into_inner()
        }
    };
    match globals.output {
        Format::Table => writeln!(out, "rollout `{}`: {}", rollout.id, summary(&rollout))?,
        format => output::machine(out, format, &rollout)?,
    }
    Ok(())
}

/// The strategy's name, as spec files spell it.
pub fn strategy(rollout: &proto::Rollout) -> &'static str {
    match rollout.spec.as_ref().and_then(|spec| spec.strategy.as_ref()) {
        Some(Strategy::Canary(_)) => "canary",
        Some(Strategy::Strangler(_)) => "strangler",
        Some(Strategy::BlueGreen(_)) => "blueGreen",
        None => "-",
    }
}

/// The current step as `n/total`, counting from 1 as people do; a finished rollout's
/// step index is past the end of its plan, which reads as the last step.
pub fn step_of(rollout: &proto::Rollout) -> String {
    let total = rollout.plan.as_ref().map_or(0, |plan| plan.steps.len());
    let current = usize::try_from(rollout.step).unwrap_or(usize::MAX).saturating_add(1).min(total);
    format!("{current}/{total}")
}

/// What the current step does, from the plan.
pub fn step_description(rollout: &proto::Rollout) -> &str {
    let steps = rollout.plan.as_ref().map(|plan| plan.steps.as_slice()).unwrap_or_default();
    usize::try_from(rollout.step).ok().and_then(|index| steps.get(index)).map_or("", |step| &step.description)
}

/// The weights in force: stable backend, then an equal-footing baseline, then the canary.
pub fn weights_of(rollout: &proto::Rollout) -> String {
    let spec = rollout.spec.as_ref();
    let order = [
        spec.map_or("", |spec| spec.stable_backend.as_str()),
        spec.map_or("", |spec| spec.baseline_backend.as_str()),
        spec.map_or("", |spec| spec.canary_backend.as_str()),
    ];
    output::weights(&rollout.weights, &order)
}

/// The route and its sides, e.g. `checkout (legacy -> k8s)` or, with an equal-footing
/// baseline, `checkout (legacy -> k8s, judged against legacy-copy)`.
pub fn sides_of(spec: &proto::RolloutSpec) -> String {
    let judged = match spec.baseline_backend.as_str() {
        "" => String::new(),
        baseline => format!(", judged against {baseline}"),
    };
    format!("{} ({} -> {}{judged})", spec.route, spec.stable_backend, spec.canary_backend)
}

/// The verdict in one line, e.g. `PASS: score 100: 3 of 3 checks passed`, with the score
/// added when the reason does not already say it.
pub fn verdict_line(verdict: &Verdict) -> String {
    let outcome = verdict.outcome().as_str_name();
    match verdict.reason.as_str() {
        "" => format!("{outcome} (score {:.0})", verdict.score),
        reason if reason.contains("score") => format!("{outcome}: {reason}"),
        reason => format!("{outcome} (score {:.0}): {reason}", verdict.score),
    }
}

/// Every check of a verdict, one line each: its outcome, name, rule and reason, so a FAIL
/// shows which check caused it and why.
pub fn check_lines(verdict: &Verdict) -> Vec<String> {
    verdict
        .checks
        .iter()
        .map(|check| {
            let mark = match check.outcome() {
                Outcome::Pass => "ok",
                Outcome::Fail => "FAIL",
                Outcome::Inconclusive | Outcome::Unspecified => "??",
            };
            let rule = if check.rule.is_empty() { String::new() } else { format!(" [{}]", check.rule) };
            format!("{mark:<4} {}{rule}: {}", check.name, check.reason)
        })
        .collect()
}

/// One line: phase, step and weights.
pub fn summary(rollout: &proto::Rollout) -> String {
    let description = match step_description(rollout) {
        "" => String::new(),
        description => format!(" ({description})"),
    };
    format!(
        "{} at step {}{description}, weights {}",
        rollout.phase().as_str_name(),
        step_of(rollout),
        weights_of(rollout)
    )
}

/// Everything about one rollout, for `rollout get`.
pub fn details(rollout: &proto::Rollout) -> String {
    let spec = rollout.spec.clone().unwrap_or_default();
    let mut fields = Fields::new();
    fields
        .field("id", &rollout.id)
        .field("route", sides_of(&spec))
        .field("strategy", strategy(rollout))
        .field("phase", rollout.phase().as_str_name())
        .field("step", format!("{} {}", step_of(rollout), step_description(rollout)).trim_end())
        .field("weights", weights_of(rollout))
        .field("applied", applied_of(rollout))
        .field("failure policy", spec.failure_policy().as_str_name())
        .field("manual gate", output::flag(spec.manual_gate));
    if let Some(verdict) = &rollout.last_verdict {
        fields.field("verdict", verdict_line(verdict));
    }
    fields
        .field("message", &rollout.message)
        .field("created", output::timestamp(rollout.created_at.as_ref()))
        .field("updated", output::timestamp(rollout.updated_at.as_ref()))
        .field("version", rollout.version.to_string());
    let mut text = fields.to_string();
    if let Some(verdict) = &rollout.last_verdict
        && !verdict.checks.is_empty()
    {
        text.push_str("\nChecks:\n");
        for line in check_lines(verdict) {
            text.push_str(&format!("  {line}\n"));
        }
    }
    if let Some(plan) = &rollout.plan {
        text.push_str("\nPlan:\n");
        text.push_str(&super::plan::render(plan, Some(rollout.step)));
    }
    if !rollout.history.is_empty() {
        text.push_str("\nHistory:\n");
        text.push_str(&history_table(rollout).to_string());
    }
    text
}

/// Whether traffic carries the rollout's weights, and since which route generation.
fn applied_of(rollout: &proto::Rollout) -> String {
    match (rollout.weights_pending, rollout.pending_reason.as_str()) {
        (false, _) if rollout.applied_generation == 0 => "-".to_owned(),
        (false, _) => format!("yes, route generation {}", rollout.applied_generation),
        (true, "") => "pending".to_owned(),
        (true, why) => format!("pending: {why}"),
    }
}

/// Every decision of the rollout, oldest first.
fn history_table(rollout: &proto::Rollout) -> Table {
    let mut table = Table::new(["AT", "PHASE", "STEP", "WEIGHTS", "VERDICT", "REASON"]);
    for entry in &rollout.history {
        let weights =
            proto::Rollout { weights: entry.weights.clone(), spec: rollout.spec.clone(), ..Default::default() };
        table.row([
            output::timestamp(entry.at.as_ref()),
            format!("{} -> {}", entry.from_phase().as_str_name(), entry.to_phase().as_str_name()),
            entry.step.to_string(),
            weights_of(&weights),
            entry.verdict.as_ref().map_or_else(|| "-".to_owned(), |verdict| verdict.outcome().as_str_name().to_owned()),
            entry.reason.clone(),
        ]);
    }
    table
}

/// Rollouts as a table, for `rollout list`.
pub fn list_table(rollouts: &[proto::Rollout], now: SystemTime) -> String {
    if rollouts.is_empty() {
        return "No rollouts.\n".to_owned();
    }
    let mut table = Table::new(["ID", "ROUTE", "STRATEGY", "PHASE", "STEP", "WEIGHTS", "AGE"]);
    for rollout in rollouts {
        table.row([
            rollout.id.clone(),
            rollout.spec.as_ref().map(|spec| spec.route.clone()).unwrap_or_default(),
            strategy(rollout).to_owned(),
            rollout.phase().as_str_name().to_owned(),
            step_of(rollout),
            weights_of(rollout),
            output::age(rollout.created_at.as_ref(), now),
        ]);
    }
    table.to_string()
}

/// Whether a phase is final: the rollout will not move again.
pub fn has_ended(phase: Phase) -> bool {
    matches!(phase, Phase::Succeeded | Phase::RolledBack | Phase::Aborted | Phase::Failed)
}

/// Whether a final phase means the new version did not make it.
pub fn ended_badly(phase: Phase) -> bool {
    matches!(phase, Phase::RolledBack | Phase::Aborted | Phase::Failed)
}
