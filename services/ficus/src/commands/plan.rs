//! `ficus plan preview`: what a spec would do, step by step, without starting anything.

use std::{io::Write, path::PathBuf};

use ficus_proto::planner::v1::{self as proto, planner_client::PlannerClient};

use super::{CliError, Globals, Remote, Service};
use crate::{
    output::{self, Format, Table},
    spec_file,
};

/// `ficus plan ...`.
#[derive(Debug, clap::Subcommand)]
pub enum PlanCommand {
    /// Show every step a spec would take, and its shortest total duration.
    ///
    /// The planner validates the spec against traffic (the route and both backends must
    /// exist) exactly as `rollout apply` would, so a preview that succeeds is a spec that
    /// applies. Nothing is started.
    #[command(
        after_help = "Examples:\n  ficus plan preview -f examples/strangler.yaml\n  ficus plan preview -f examples/canary.yaml -o json"
    )]
    Preview {
        /// The rollout spec (YAML or JSON, the proto3 JSON mapping of `RolloutSpec`); `-` for stdin.
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
    },
}

/// Runs a `plan` command.
pub async fn run(globals: &Globals, command: PlanCommand, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    match command {
        PlanCommand::Preview { file } => {
            let spec = spec_file::read(&file)?;
            let planner = Remote::connect(Service::Planner, globals.planner(), &globals.credentials()?)?;
            let response = PlannerClient::new(planner.channel.clone())
                .preview_plan(proto::PreviewPlanRequest { spec: Some(spec) })
                .await
                .map_err(|status| planner.error(status))?
                .into_inner();
            match globals.output {
                Format::Table => write!(out, "{}", render(&response.plan.unwrap_or_default(), None))?,
                format => output::machine(out, format, &response)?,
            }
            Ok(())
        }
    }
}

/// A plan as a table, with its minimum total duration; `current` marks the step a rollout
/// is at (`rollout get`).
pub fn render(plan: &proto::Plan, current: Option<u32>) -> String {
    let scaled = plan.steps.iter().any(|step| step.replicas.is_some());
    let mut header = vec!["", "STEP", "DESCRIPTION", "CANARY", "DURATION", "ANALYSIS", "GATE"];
    if scaled {
        header.extend(["STABLE PODS", "CANARY PODS", "MAX PODS", "MIN AVAILABLE"]);
    }
    if current.is_none() {
        header.remove(0);
    }
    let mut table = Table::new(header);
    for step in &plan.steps {
        let mut row = Vec::with_capacity(11);
        if let Some(current) = current {
            row.push(if step.index == current { ">" } else { "" }.to_owned());
        }
        row.extend([
            step.index.to_string(),
            step.description.clone(),
            output::percent(step.canary_weight),
            match &step.duration {
                None => "until promoted".to_owned(),
                Some(duration) if duration.seconds == 0 && duration.nanos == 0 => "-".to_owned(),
                Some(duration) => output::proto_duration(duration),
            },
            output::flag(step.analysis).to_owned(),
            output::flag(step.gate).to_owned(),
        ]);
        if let Some(replicas) = &step.replicas {
            row.extend([
                replicas.stable.to_string(),
                replicas.canary.to_string(),
                replicas.max_pods.to_string(),
                replicas.min_available.to_string(),
            ]);
        }
        table.row(row);
    }
    let minimum = plan.minimum_duration.as_ref().map(output::proto_duration).unwrap_or_else(|| "0s".to_owned());
    let waits = plan.steps.iter().any(|step| step.gate);
    let note = if waits { " (plus the time until each promotion)" } else { "" };
    format!("{table}\nMinimum total duration: {minimum}{note}\n")
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::*;

    #[test]
    fn a_plan_reads_as_a_table_with_its_minimum_duration() {
        let plan = proto::Plan {
            steps: vec![
                proto::PlannedStep {
                    index: 0,
                    description: "set canary weight to 5%".into(),
                    canary_weight: 5.0,
                    weights: HashMap::new(),
                    duration: Some(Duration::ZERO.into()),
                    ..Default::default()
                },
                proto::PlannedStep {
                    index: 1,
                    description: "observe 24h with analysis".into(),
                    canary_weight: 5.0,
                    duration: Some(Duration::from_secs(86_400).into()),
                    analysis: true,
                    ..Default::default()
                },
                proto::PlannedStep {
                    index: 2,
                    description: "wait for promotion".into(),
                    canary_weight: 5.0,
                    gate: true,
                    ..Default::default()
                },
            ],
            minimum_duration: Some(Duration::from_secs(86_400).into()),
        };
        let text = render(&plan, Some(1));
        assert_eq!(
            text,
            "   STEP  DESCRIPTION                CANARY  DURATION        ANALYSIS  GATE\n\
             \x20  0     set canary weight to 5%    5%      -               -         -\n\
             >  1     observe 24h with analysis  5%      24h             yes       -\n\
             \x20  2     wait for promotion         5%      until promoted  -         yes\n\
             \nMinimum total duration: 24h (plus the time until each promotion)\n"
        );
    }
}
