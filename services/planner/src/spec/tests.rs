use std::time::Duration;

use ficus_proto::planner::v1::{self as proto, canary_step::Step, rollout_spec::Strategy as ProtoStrategy};

use super::*;

fn secs(seconds: i64) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration { seconds, nanos: 0 })
}

fn set_weight(percent: f64) -> proto::CanaryStep {
    proto::CanaryStep { step: Some(Step::SetWeight(percent)) }
}

fn pause(duration: Option<pbjson_types::Duration>) -> proto::CanaryStep {
    proto::CanaryStep { step: Some(Step::Pause(proto::PauseStep { duration })) }
}

fn analysis_step(window: Option<pbjson_types::Duration>) -> proto::CanaryStep {
    proto::CanaryStep {
        step: Some(Step::Analysis(proto::AnalysisStep { window, template: None, progress_deadline: None })),
    }
}

fn canary(steps: Vec<proto::CanaryStep>) -> proto::RolloutSpec {
    proto::RolloutSpec {
        route: "checkout".into(),
        stable_backend: "legacy".into(),
        canary_backend: "k8s".into(),
        strategy: Some(ProtoStrategy::Canary(proto::CanaryStrategy { steps })),
        ..Default::default()
    }
}

fn strangler(stages: &[(f64, Option<i64>)], window: Option<i64>) -> proto::RolloutSpec {
    let stages = stages
        .iter()
        .map(|&(weight, window)| proto::Stage { weight, window: window.and_then(secs), progress_deadline: None })
        .collect();
    proto::RolloutSpec {
        strategy: Some(ProtoStrategy::Strangler(proto::StranglerStrategy { stages, window: window.and_then(secs) })),
        ..canary(Vec::new())
    }
}

fn blue_green(preview_window: Option<i64>, retention: Option<i64>) -> proto::RolloutSpec {
    proto::RolloutSpec {
        strategy: Some(ProtoStrategy::BlueGreen(proto::BlueGreenStrategy {
            preview_window: preview_window.and_then(secs),
            retention: retention.and_then(secs),
        })),
        ..canary(Vec::new())
    }
}

/// A template told apart by the name of its only check.
fn template(name: &str) -> ficus_proto::analysis::v1::AnalysisTemplate {
    let check = ficus_proto::analysis::v1::Check { name: name.into(), ..Default::default() };
    ficus_proto::analysis::v1::AnalysisTemplate { checks: vec![check], ..Default::default() }
}

/// The field path of the refusal, panicking when the spec is accepted.
fn refused(spec: &proto::RolloutSpec) -> String {
    match Spec::from_proto(spec, "spec") {
        Ok(validated) => panic!("accepted {validated:?}"),
        Err(invalid) => invalid.field,
    }
}

const DAY: i64 = 24 * 3600;

#[test]
fn refusals_name_the_field_path() {
    let good = canary(vec![set_weight(20.0), pause(None), set_weight(50.0)]);
    let with = |edit: &dyn Fn(&mut proto::RolloutSpec)| {
        let mut spec = good.clone();
        edit(&mut spec);
        spec
    };
    let scaling = |replicas, surge: &str, unavailable: &str| {
        Some(proto::Scaling {
            replicas,
            max_surge: surge.into(),
            max_unavailable: unavailable.into(),
            deployments: None,
        })
    };
    let analysis = |interval, stage_templates: Vec<(f64, bool)>| {
        Some(proto::AnalysisSpec {
            template: None,
            interval,
            stage_templates: stage_templates
                .into_iter()
                .map(|(up_to_weight, has)| proto::StageTemplate { up_to_weight, template: has.then(|| template("t")) })
                .collect(),
            initial_delay: None,
        })
    };
    let warm_up = |seconds: i64| {
        Some(proto::AnalysisSpec {
            initial_delay: Some(pbjson_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        })
    };
    let cases: Vec<(proto::RolloutSpec, &str)> = vec![
        (with(&|s| s.route.clear()), "spec.route"),
        (with(&|s| s.route = "Checkout".into()), "spec.route"),
        (with(&|s| s.route = "a".repeat(64)), "spec.route"),
        (with(&|s| s.stable_backend = "-legacy".into()), "spec.stable_backend"),
        (with(&|s| s.canary_backend = "k8s_new".into()), "spec.canary_backend"),
        (with(&|s| s.canary_backend = "legacy".into()), "spec.canary_backend"),
        (with(&|s| s.strategy = None), "spec"),
        (canary(Vec::new()), "spec.canary.steps"),
        (canary(vec![set_weight(5.0), proto::CanaryStep { step: None }]), "spec.canary.steps[1]"),
        (canary(vec![set_weight(5.0), pause(None), set_weight(100.5)]), "spec.canary.steps[2].set_weight"),
        (canary(vec![set_weight(5.0), pause(None), set_weight(-1.0)]), "spec.canary.steps[2].set_weight"),
        (canary(vec![set_weight(5.0), pause(None), set_weight(f64::NAN)]), "spec.canary.steps[2].set_weight"),
        (canary(vec![set_weight(5.0), pause(None), set_weight(20.125)]), "spec.canary.steps[2].set_weight"),
        (canary(vec![set_weight(20.0), pause(None), set_weight(10.0)]), "spec.canary.steps[2].set_weight"),
        (canary(vec![set_weight(5.0), pause(secs(0))]), "spec.canary.steps[1].pause.duration"),
        (canary(vec![set_weight(5.0), pause(secs(-5))]), "spec.canary.steps[1].pause.duration"),
        (canary(vec![set_weight(5.0), analysis_step(None)]), "spec.canary.steps[1].analysis.window"),
        (canary(vec![set_weight(5.0), analysis_step(secs(0))]), "spec.canary.steps[1].analysis.window"),
        (
            canary(vec![analysis_step(Some(pbjson_types::Duration { seconds: 1, nanos: 1_000_000_000 }))]),
            "spec.canary.steps[0].analysis.window",
        ),
        (strangler(&[(5.0, None), (5.0, None)], None), "spec.strangler.stages[1].weight"),
        (strangler(&[(20.0, None), (10.0, None)], None), "spec.strangler.stages[1].weight"),
        (strangler(&[(0.0, None)], None), "spec.strangler.stages[0].weight"),
        (strangler(&[(5.0, None), (120.0, None)], None), "spec.strangler.stages[1].weight"),
        (strangler(&[(5.0, Some(0))], None), "spec.strangler.stages[0].window"),
        (strangler(&[(5.0, None)], Some(-1)), "spec.strangler.window"),
        (strangler(&[], Some(0)), "spec.strangler.window"),
        (blue_green(Some(0), None), "spec.blue_green.preview_window"),
        (blue_green(None, Some(0)), "spec.blue_green.retention"),
        (blue_green(None, Some(90 * DAY + 1)), "spec.blue_green.retention"),
        (with(&|s| s.failure_policy = 7), "spec.failure_policy"),
        (with(&|s| s.failure_policy = -1), "spec.failure_policy"),
        (with(&|s| s.scaling = scaling(0, "", "")), "spec.scaling.replicas"),
        (with(&|s| s.scaling = scaling(10, "abc", "")), "spec.scaling.max_surge"),
        (with(&|s| s.scaling = scaling(10, "101%", "")), "spec.scaling.max_surge"),
        (with(&|s| s.scaling = scaling(10, "", "-1")), "spec.scaling.max_unavailable"),
        (with(&|s| s.scaling = scaling(10, "0", "0%")), "spec.scaling.max_unavailable"),
        (with(&|s| s.analysis = analysis(secs(0), Vec::new())), "spec.analysis.interval"),
        (with(&|s| s.analysis = analysis(None, vec![(0.0, true)])), "spec.analysis.stage_templates[0].up_to_weight"),
        (with(&|s| s.analysis = analysis(None, vec![(101.0, true)])), "spec.analysis.stage_templates[0].up_to_weight"),
        (
            with(&|s| s.analysis = analysis(None, vec![(20.0, true), (20.0, true)])),
            "spec.analysis.stage_templates[1].up_to_weight",
        ),
        (with(&|s| s.analysis = analysis(None, vec![(20.0, false)])), "spec.analysis.stage_templates[0].template"),
        (with(&|s| s.analysis = warm_up(-5)), "spec.analysis.initial_delay"),
        (with(&|s| s.analysis = warm_up(3601)), "spec.analysis.initial_delay"),
        (with(&|s| s.analysis = warm_up(i64::MAX)), "spec.analysis.initial_delay"),
    ];
    for (spec, field) in cases {
        assert_eq!(refused(&spec), field, "{spec:?}");
    }
}

#[test]
fn the_caller_chooses_the_prefix() {
    let spec = canary(vec![set_weight(50.0), set_weight(20.0)]);
    let invalid = Spec::from_proto(&spec, "request.spec").expect_err("weights fall");
    assert_eq!(invalid.field, "request.spec.canary.steps[1].set_weight");
    assert!(invalid.reason.contains("weights rising"), "{}", invalid.reason);
}

#[test]
fn weights_are_exact_basis_points() {
    let cases = [
        (0.0, Some(0)),
        (5.0, Some(500)),
        (0.01, Some(1)),
        (0.29, Some(29)),
        (12.34, Some(1234)),
        (33.33, Some(3333)),
        (99.99, Some(9999)),
        (100.0, Some(10_000)),
        (0.001, None),
        (33.333, None),
        (100.01, None),
        (-0.01, None),
        (f64::INFINITY, None),
        (f64::NAN, None),
    ];
    for (percent, expected) in cases {
        assert_eq!(basis_points(percent), expected, "{percent}");
    }
}

#[test]
fn canary_steps_are_kept_as_written() {
    let spec = canary(vec![set_weight(5.0), pause(secs(3600)), set_weight(5.0), pause(None), analysis_step(secs(600))]);
    let spec = Spec::from_proto(&spec, "spec").expect("valid");
    assert_eq!(
        spec.strategy,
        Strategy::Canary(vec![
            CanaryStep::SetWeight(500),
            CanaryStep::Pause(Some(Duration::from_secs(3600))),
            CanaryStep::SetWeight(500),
            CanaryStep::Pause(None),
            CanaryStep::Analysis { window: Duration::from_secs(600), template: None, progress_deadline: None },
        ])
    );
    assert_eq!(spec.failure_policy, FailurePolicy::RollbackToPreviousStage, "the proto default");
    assert_eq!((spec.analysis, spec.scaling, spec.manual_gate), (None, None, false));
}

#[test]
fn strangler_defaults_to_five_stages_of_a_day() {
    let spec = Spec::from_proto(&strangler(&[], None), "spec").expect("valid");
    let day = Duration::from_secs(24 * 3600);
    let expected = [500, 2000, 5000, 8000, 10_000].map(|weight| Stage { weight, window: day, progress_deadline: None });
    assert_eq!(spec.strategy, Strategy::Strangler(expected.to_vec()));
}

#[test]
fn strangler_stopping_short_gets_a_final_stage_with_the_strategy_window() {
    let spec = Spec::from_proto(&strangler(&[(5.0, Some(60)), (20.0, None)], Some(120)), "spec").expect("valid");
    let stages = vec![
        Stage { weight: 500, window: Duration::from_secs(60), progress_deadline: None },
        Stage { weight: 2000, window: Duration::from_secs(120), progress_deadline: None },
        Stage { weight: 10_000, window: Duration::from_secs(120), progress_deadline: None },
    ];
    assert_eq!(spec.strategy, Strategy::Strangler(stages));
}

#[test]
fn blue_green_keeps_the_old_side_two_weeks_by_default_and_at_most_ninety_days() {
    let spec = Spec::from_proto(&blue_green(None, None), "spec").expect("valid");
    let expected = BlueGreen { preview_window: None, retention: Duration::from_secs(14 * 24 * 3600) };
    assert_eq!(spec.strategy, Strategy::BlueGreen(expected));
    let longest = Spec::from_proto(&blue_green(Some(600), Some(90 * DAY)), "spec").expect("90 days is allowed");
    let expected = BlueGreen { preview_window: Some(Duration::from_secs(600)), retention: MAX_RETENTION };
    assert_eq!(longest.strategy, Strategy::BlueGreen(expected));
}

#[test]
fn scaling_and_policy_are_resolved() {
    let mut spec = canary(vec![set_weight(50.0)]);
    spec.scaling = Some(proto::Scaling {
        replicas: 10,
        max_surge: String::new(),
        max_unavailable: String::new(),
        deployments: None,
    });
    spec.failure_policy = FailurePolicy::PauseForHuman as i32;
    let spec = Spec::from_proto(&spec, "spec").expect("valid");
    assert_eq!(spec.scaling, Some(Scaling { replicas: 10, max_surge: 3, max_unavailable: 2 }));
    assert_eq!(spec.failure_policy, FailurePolicy::PauseForHuman);
}

#[test]
fn stage_templates_pick_the_first_that_covers_the_weight() {
    let mut spec = canary(vec![set_weight(50.0)]);
    spec.analysis = Some(proto::AnalysisSpec {
        template: Some(template("default")),
        interval: None,
        stage_templates: vec![
            proto::StageTemplate { up_to_weight: 5.0, template: Some(template("strict")) },
            proto::StageTemplate { up_to_weight: 50.0, template: Some(template("looser")) },
        ],
        initial_delay: None,
    });
    let spec = Spec::from_proto(&spec, "spec").expect("valid");
    let analysis = spec.analysis.expect("analysis");
    assert_eq!(analysis.interval, DEFAULT_ANALYSIS_INTERVAL);
    let name = |weight| analysis.template_for(weight).map(|template| template.checks[0].name.as_str());
    assert_eq!(name(0), Some("strict"));
    assert_eq!(name(500), Some("strict"));
    assert_eq!(name(501), Some("looser"));
    assert_eq!(name(5000), Some("looser"));
    assert_eq!(name(8000), Some("default"));
}

#[test]
fn an_equal_footing_baseline_is_a_third_backend_and_not_for_blue_green() {
    let with_baseline = |mut spec: proto::RolloutSpec, baseline: &str| {
        spec.baseline_backend = baseline.into();
        spec
    };
    let accepted = Spec::from_proto(&with_baseline(strangler(&[], None), "legacy-copy"), "spec").expect("valid");
    assert_eq!(accepted.baseline_backend.as_deref(), Some("legacy-copy"));
    assert_eq!(Spec::from_proto(&strangler(&[], None), "spec").expect("valid").baseline_backend, None);
    for spec in [
        with_baseline(strangler(&[], None), "legacy"),
        with_baseline(strangler(&[], None), "k8s"),
        with_baseline(strangler(&[], None), "no spaces"),
        with_baseline(blue_green(None, None), "legacy-copy"),
    ] {
        assert_eq!(refused(&spec), "spec.baseline_backend", "{spec:?}");
    }
}

#[test]
fn durations_too_long_to_add_to_a_clock_are_refused_by_field() {
    let year_and_a_day = Some(pbjson_types::Duration { seconds: 367 * 24 * 3600, nanos: 0 });
    let far = Some(pbjson_types::Duration { seconds: i64::MAX, nanos: 0 });
    let mut spec = strangler(&[(20.0, None)], None);
    spec.analysis = Some(proto::AnalysisSpec { interval: far, ..Default::default() });
    assert_eq!(refused(&spec), "spec.analysis.interval");
    assert_eq!(refused(&strangler(&[(20.0, Some(i64::MAX))], None)), "spec.strangler.stages[0].window");
    assert_eq!(refused(&canary(vec![set_weight(20.0), pause(year_and_a_day)])), "spec.canary.steps[1].pause.duration");
    assert_eq!(refused(&canary(vec![set_weight(20.0), analysis_step(far)])), "spec.canary.steps[1].analysis.window");
    // A year is still a valid window.
    let year = 366 * 24 * 3600;
    assert!(Spec::from_proto(&strangler(&[(20.0, Some(year))], None), "spec").is_ok());
}

#[test]
fn deadlines_are_checked_by_field() {
    let far = Some(pbjson_types::Duration { seconds: 1_000_000_000_000, nanos: 0 });
    let analysed = || proto::RolloutSpec { analysis: Some(proto::AnalysisSpec::default()), ..strangler(&[], None) };
    let mut spec = analysed();
    spec.progress_deadline = far;
    assert_eq!(refused(&spec), "spec.progress_deadline");
    let mut spec = analysed();
    spec.inconclusive_deadline = Some(pbjson_types::Duration { seconds: -5, nanos: 0 });
    assert_eq!(refused(&spec), "spec.inconclusive_deadline");
    let mut spec = analysed();
    spec.deadline_action = 17;
    assert_eq!(refused(&spec), "spec.deadline_action");
    let mut spec = strangler(&[], None);
    spec.inconclusive_deadline = secs(600);
    assert_eq!(refused(&spec), "spec.inconclusive_deadline", "nothing can be inconclusive without analysis");

    let mut spec = analysed();
    spec.progress_deadline = secs(3_600);
    spec.inconclusive_deadline = secs(600);
    spec.deadline_action = proto::DeadlineAction::RollBack.into();
    let deadlines = Spec::from_proto(&spec, "spec").expect("valid").deadlines;
    assert_eq!(
        deadlines,
        Deadlines {
            progress: Some(Duration::from_secs(3_600)),
            inconclusive: Some(Duration::from_secs(600)),
            action: DeadlineAction::RollBack,
        }
    );
}

#[test]
fn a_steps_own_progress_deadline_is_checked_by_field_and_replaces_the_rollouts() {
    let far = Some(pbjson_types::Duration { seconds: 1_000_000_000_000, nanos: 0 });
    let mut spec = strangler(&[(20.0, Some(60)), (100.0, Some(60))], None);
    if let Some(ProtoStrategy::Strangler(strangler)) = spec.strategy.as_mut() {
        strangler.stages[1].progress_deadline = far;
    }
    assert_eq!(refused(&spec), "spec.strangler.stages[1].progress_deadline");
    let step = proto::CanaryStep {
        step: Some(Step::Analysis(proto::AnalysisStep { window: secs(60), template: None, progress_deadline: far })),
    };
    assert_eq!(refused(&canary(vec![set_weight(20.0), step])), "spec.canary.steps[1].analysis.progress_deadline");

    let mut spec = strangler(&[(20.0, Some(60)), (100.0, Some(60))], None);
    spec.progress_deadline = secs(3_600);
    if let Some(ProtoStrategy::Strangler(strangler)) = spec.strategy.as_mut() {
        strangler.stages[0].progress_deadline = secs(60);
    }
    let plan = crate::plan::Plan::new(&Spec::from_proto(&spec, "spec").expect("valid"));
    let deadlines: Vec<Option<u64>> =
        plan.steps().iter().map(|step| step.progress_deadline.map(|deadline| deadline.as_secs())).collect();
    assert_eq!(deadlines, [Some(3_600), Some(60), Some(3_600), Some(3_600)], "the 20% window has its own");
}
