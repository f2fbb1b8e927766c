use std::time::Duration;

use ficus_proto::{
    analysis::v1 as analysis,
    planner::v1::{self as proto, canary_step::Step as ProtoStep, rollout_spec::Strategy as ProtoStrategy},
};

use super::*;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

fn secs(seconds: u64) -> Option<pbjson_types::Duration> {
    Some(Duration::from_secs(seconds).into())
}

fn rollout(strategy: ProtoStrategy) -> proto::RolloutSpec {
    proto::RolloutSpec {
        route: "checkout".into(),
        stable_backend: "legacy".into(),
        canary_backend: "k8s".into(),
        strategy: Some(strategy),
        ..Default::default()
    }
}

fn plan_of(spec: &proto::RolloutSpec) -> Plan {
    Plan::new(&Spec::from_proto(spec, "spec").expect("valid spec"))
}

fn default_strangler() -> proto::RolloutSpec {
    rollout(ProtoStrategy::Strangler(proto::StranglerStrategy::default()))
}

fn canary(steps: Vec<ProtoStep>) -> proto::RolloutSpec {
    let steps = steps.into_iter().map(|step| proto::CanaryStep { step: Some(step) }).collect();
    rollout(ProtoStrategy::Canary(proto::CanaryStrategy { steps }))
}

fn pause(seconds: Option<u64>) -> ProtoStep {
    ProtoStep::Pause(proto::PauseStep { duration: seconds.and_then(secs) })
}

fn blue_green(preview: Option<u64>) -> proto::RolloutSpec {
    rollout(ProtoStrategy::BlueGreen(proto::BlueGreenStrategy {
        preview_window: preview.and_then(secs),
        retention: None,
    }))
}

fn descriptions(plan: &Plan) -> Vec<String> {
    plan.steps().iter().map(Step::description).collect()
}

fn weights_of(plan: &Plan) -> Vec<u32> {
    plan.steps().iter().map(|step| step.weight).collect()
}

/// A template told apart by the name of its only check.
fn template(name: &str) -> analysis::AnalysisTemplate {
    let check = analysis::Check { name: name.into(), ..Default::default() };
    analysis::AnalysisTemplate { checks: vec![check], ..Default::default() }
}

fn template_name(step: &Step) -> Option<&str> {
    step.template.as_ref().map(|template| template.checks[0].name.as_str())
}

#[test]
fn the_default_strangler_plan_takes_five_days() {
    let plan = plan_of(&default_strangler());
    let expected: Vec<String> = [5, 20, 50, 80, 100]
        .iter()
        .flat_map(|weight| [format!("set canary weight to {weight}%"), "observe 24h".to_owned()])
        .collect();
    assert_eq!(descriptions(&plan), expected);
    assert_eq!(weights_of(&plan), [500, 500, 2000, 2000, 5000, 5000, 8000, 8000, 10_000, 10_000]);
    assert_eq!(plan.minimum_duration(), Duration::from_secs(5 * DAY));
    assert!(plan.steps().iter().all(|step| !step.analysis() && !step.waits_for_promotion()));
    assert_eq!(plan.steps()[2].weights, HashMap::from([("legacy".to_owned(), 8000), ("k8s".to_owned(), 2000)]));
}

#[test]
fn strangler_windows_are_analysed_when_the_spec_has_analysis() {
    let mut spec = default_strangler();
    spec.analysis = Some(proto::AnalysisSpec {
        template: Some(template("default")),
        interval: None,
        stage_templates: vec![proto::StageTemplate { up_to_weight: 20.0, template: Some(template("strict")) }],
        initial_delay: None,
    });
    let plan = plan_of(&spec);
    assert_eq!(plan.steps()[1].description(), "observe 24h with analysis");
    let observed: Vec<_> = plan.steps().iter().filter(|step| step.analysis()).map(template_name).collect();
    assert_eq!(observed, [Some("strict"), Some("strict"), Some("default"), Some("default")]);
    let last = plan.steps().last().expect("steps");
    assert_eq!(last.description(), "observe 24h", "at 100% there is no old side left to compare with");
    assert!(plan.steps().iter().filter(|step| !step.analysis()).all(|step| step.template.is_none()));
}

#[test]
fn an_open_canary_pause_waits_for_a_human_and_adds_no_time() {
    let plan = plan_of(&canary(vec![
        ProtoStep::SetWeight(20.0),
        pause(None),
        ProtoStep::SetWeight(50.0),
        pause(Some(HOUR)),
        ProtoStep::Analysis(proto::AnalysisStep {
            window: secs(600),
            template: Some(template("step")),
            progress_deadline: None,
        }),
    ]));
    assert_eq!(
        descriptions(&plan),
        [
            "set canary weight to 20%",
            "pause until promoted",
            "set canary weight to 50%",
            "pause 1h",
            "observe 10m with analysis",
            "set canary weight to 100%",
        ]
    );
    assert_eq!(weights_of(&plan), [2000, 2000, 5000, 5000, 5000, 10_000]);
    assert_eq!(plan.minimum_duration(), Duration::from_secs(HOUR + 600));
    let open = &plan.steps()[1];
    assert!(open.waits_for_promotion());
    assert_eq!(open.duration(), None);
    assert_eq!(template_name(&plan.steps()[4]), Some("step"), "the step's own template wins");
}

#[test]
fn a_canary_analysis_step_runs_analysis_even_without_a_rollout_template() {
    let plan = plan_of(&canary(vec![ProtoStep::Analysis(proto::AnalysisStep {
        window: secs(60),
        template: None,
        progress_deadline: None,
    })]));
    let observe = &plan.steps()[0];
    assert_eq!((observe.weight, observe.analysis(), observe.template.as_ref()), (0, true, None));
    assert_eq!(descriptions(&plan), ["observe 1m with analysis", "set canary weight to 100%"]);
}

#[test]
fn a_canary_reaching_100_gets_no_extra_switch() {
    let plan = plan_of(&canary(vec![ProtoStep::SetWeight(50.0), ProtoStep::SetWeight(100.0), pause(Some(60))]));
    assert_eq!(descriptions(&plan), ["set canary weight to 50%", "set canary weight to 100%", "pause 1m"]);
}

#[test]
fn blue_green_previews_switches_at_once_and_keeps_the_old_side() {
    let mut spec = blue_green(Some(600));
    spec.analysis = Some(proto::AnalysisSpec::default());
    let plan = plan_of(&spec);
    assert_eq!(
        descriptions(&plan),
        ["observe 10m with analysis", "set canary weight to 100%", "keep the old side for 14d (instant switch back)"]
    );
    assert_eq!(weights_of(&plan), [0, 10_000, 10_000]);
    assert_eq!(plan.steps()[0].weights, HashMap::from([("legacy".to_owned(), 10_000), ("k8s".to_owned(), 0)]));
    assert_eq!(plan.steps()[2].kind, StepKind::Retain { duration: Duration::from_secs(14 * DAY) });
    assert_eq!(plan.minimum_duration(), Duration::from_secs(600 + 14 * DAY));
    assert_eq!(plan.previous_weight(2), 0, "a failure after the switch goes back to the old side");
}

#[test]
fn the_manual_gate_stands_right_before_the_switch_to_100() {
    let gated = |mut spec: proto::RolloutSpec| {
        spec.manual_gate = true;
        let plan = plan_of(&spec);
        let gate = plan.steps().iter().position(|step| step.kind == StepKind::Gate).expect("a gate");
        assert_eq!(plan.steps().iter().filter(|step| step.kind == StepKind::Gate).count(), 1);
        assert_eq!(plan.steps()[gate + 1].kind, StepKind::SetWeight { bp: FULL_WEIGHT });
        assert!(plan.steps()[..gate].iter().all(|step| step.weight < FULL_WEIGHT));
        assert_eq!(
            (plan.steps()[gate].description(), plan.steps()[gate].duration()),
            ("wait for promotion".into(), None)
        );
        (gate, plan.minimum_duration())
    };
    assert_eq!(gated(default_strangler()), (8, Duration::from_secs(5 * DAY)));
    assert_eq!(gated(canary(vec![ProtoStep::SetWeight(20.0), pause(Some(60))])).0, 2, "before the added switch");
    assert_eq!(gated(canary(vec![ProtoStep::SetWeight(20.0), ProtoStep::SetWeight(100.0)])).0, 1);
    assert_eq!(gated(blue_green(Some(60))).0, 1, "after the preview");
    assert_eq!(gated(blue_green(None)).0, 0);
}

#[test]
fn previous_weight_is_the_stage_before_the_current_one() {
    let plan = plan_of(&default_strangler());
    // 0 set 5, 1 observe 5, 2 set 20, 3 observe 20, 4 set 50, ...
    let previous: Vec<u32> = (0..plan.len()).map(|index| plan.previous_weight(index)).collect();
    assert_eq!(previous, [0, 0, 500, 500, 2000, 2000, 5000, 5000, 8000, 8000]);
    assert_eq!(plan.previous_weight(99), 8000, "past the end reads as the last step");

    let repeated = plan_of(&canary(vec![
        ProtoStep::SetWeight(10.0),
        pause(Some(60)),
        ProtoStep::SetWeight(30.0),
        pause(Some(60)),
        ProtoStep::SetWeight(30.0),
        pause(None),
    ]));
    assert_eq!(repeated.previous_weight(5), 1000, "repeating 30% does not make 30% its own previous stage");
    assert_eq!(
        repeated.weights(repeated.previous_weight(5)),
        HashMap::from([("legacy".into(), 9000), ("k8s".into(), 1000)])
    );
}

#[test]
fn steps_carry_replica_counts_when_the_spec_scales() {
    let mut spec = default_strangler();
    spec.scaling = Some(proto::Scaling {
        replicas: 10,
        max_surge: "25%".into(),
        max_unavailable: "25%".into(),
        deployments: None,
    });
    let plan = plan_of(&spec);
    let counts: Vec<(u32, u32)> = plan
        .steps()
        .iter()
        .step_by(2)
        .map(|step| step.replicas.map(|r| (r.stable, r.canary)).expect("replicas"))
        .collect();
    assert_eq!(counts, [(10, 1), (8, 2), (5, 5), (2, 8), (0, 10)]);
    let first = plan.to_proto().steps[0].replicas.expect("replicas in the proto");
    assert_eq!(first, proto::ReplicaPlan { stable: 10, canary: 1, max_pods: 13, min_available: 8 });
    assert!(plan_of(&default_strangler()).steps().iter().all(|step| step.replicas.is_none()));
}

#[test]
fn the_proto_plan_shows_every_step() {
    let mut spec = canary(vec![ProtoStep::SetWeight(12.5), pause(None), ProtoStep::SetWeight(50.0)]);
    spec.manual_gate = true;
    let plan = plan_of(&spec).to_proto();
    assert_eq!(plan.minimum_duration, Some(Duration::ZERO.into()));
    let step = |index: u32, description: &str, bp: u32, duration: Option<u64>, gate: bool| proto::PlannedStep {
        index,
        description: description.into(),
        canary_weight: f64::from(bp) / 100.0,
        weights: HashMap::from([("legacy".into(), 10_000 - bp), ("k8s".into(), bp)]),
        duration: duration.and_then(secs),
        analysis: false,
        gate,
        replicas: None,
    };
    assert_eq!(
        plan.steps,
        [
            step(0, "set canary weight to 12.5%", 1250, Some(0), false),
            step(1, "pause until promoted", 1250, None, true),
            step(2, "set canary weight to 50%", 5000, Some(0), false),
            step(3, "wait for promotion", 5000, None, true),
            step(4, "set canary weight to 100%", 10_000, Some(0), false),
        ]
    );
}

#[test]
fn durations_and_weights_read_the_way_people_write_them() {
    let durations = [
        (Duration::ZERO, "0s"),
        (Duration::from_millis(500), "500ms"),
        (Duration::from_millis(1500), "1s500ms"),
        (Duration::from_secs(60), "1m"),
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_secs(HOUR), "1h"),
        (Duration::from_secs(DAY), "24h"),
        (Duration::from_secs(36 * HOUR), "36h"),
        (Duration::from_secs(2 * DAY), "2d"),
        (Duration::from_secs(14 * DAY + HOUR), "14d1h"),
        (Duration::from_nanos(1_001), "1us1ns"),
    ];
    for (duration, text) in durations {
        assert_eq!(Human(duration).to_string(), text);
    }
    for (bp, text) in [(0, "0%"), (1, "0.01%"), (25, "0.25%"), (500, "5%"), (2050, "20.5%"), (10_000, "100%")] {
        assert_eq!(Percent(bp).to_string(), text);
    }
}

#[test]
fn a_yaml_strangler_spec_plans_through_the_proto3_json_mapping() {
    let yaml = r"
route: checkout
stableBackend: legacy
canaryBackend: k8s
strangler:
  stages: [{weight: 5, window: 60s}, {weight: 20, window: 60s}, {weight: 100}]
  window: 120s
failurePolicy: ROLLBACK_TO_PREVIOUS_STAGE
";
    let spec: proto::RolloutSpec = serde_yaml_ng::from_str(yaml).expect("the YAML decodes into a RolloutSpec");
    let validated = Spec::from_proto(&spec, "spec").expect("valid spec");
    assert_eq!(validated.failure_policy, crate::spec::FailurePolicy::RollbackToPreviousStage);
    let plan = Plan::new(&validated);
    assert_eq!(
        descriptions(&plan),
        [
            "set canary weight to 5%",
            "observe 1m",
            "set canary weight to 20%",
            "observe 1m",
            "set canary weight to 100%",
            "observe 2m",
        ]
    );
    assert_eq!(plan.minimum_duration(), Duration::from_secs(60 + 60 + 120));
    assert_eq!(plan.previous_weight(4), 2000);

    // Back to YAML and in again: the spec survives the mapping unchanged.
    let written = serde_yaml_ng::to_string(&spec).expect("the spec encodes");
    let reread: proto::RolloutSpec = serde_yaml_ng::from_str(&written).expect("the written YAML decodes");
    assert_eq!(reread, spec);
    assert!(written.contains("stableBackend: legacy"), "proto3 JSON names, as a user writes them: {written}");
}

#[test]
fn an_equal_footing_baseline_gets_the_canary_share_from_the_stable_side() {
    let mut spec = default_strangler();
    spec.baseline_backend = "legacy-copy".into();
    let plan = plan_of(&spec);
    let share = |weights: &HashMap<String, u32>| (weights["legacy"], weights["legacy-copy"], weights["k8s"]);
    // 5/20/50/80/100: the copy matches the canary up to half, then takes what is left.
    let set: Vec<(u32, u32, u32)> = plan
        .steps()
        .iter()
        .filter(|step| matches!(step.kind, StepKind::SetWeight { .. }))
        .map(|step| share(&step.weights))
        .collect();
    assert_eq!(set, [(9_000, 500, 500), (6_000, 2_000, 2_000), (0, 5_000, 5_000), (0, 2_000, 8_000), (0, 0, 10_000)]);
    assert!(plan.steps().iter().all(|step| step.weights.values().sum::<u32>() == FULL_WEIGHT));
    // Rolling back or aborting gives the copy's share back with the canary's.
    assert_eq!(share(&plan.weights(0)), (10_000, 0, 0));
    assert_eq!(share(&plan.weights(2_000)), (6_000, 2_000, 2_000));
    // Without one, two backends as before.
    assert_eq!(plan_of(&default_strangler()).weights(500).len(), 2);
}
