use std::time::SystemTime;

use ficus_proto::analysis::v1::{
    self as proto, Outcome, builtin_metric::Kind, check::Rule as ProtoRule, metric::Source,
};

use super::*;
use crate::observation::Observation;

fn default_judge(planned_looks: Option<u32>) -> Judge {
    Judge::new(Template::from_proto(&default_template(), "template").unwrap(), planned_looks)
}

fn rate(failures: u64, trials: u64) -> Observation {
    Observation::Proportion { failures, trials }
}

/// A latency histogram of `n` requests spread over three buckets, `scale` times slower.
fn latency(n: u64, scale: f64) -> Observation {
    let buckets = vec![(0.010 * scale, n * 60 / 100), (0.020 * scale, n * 39 / 100), (0.050 * scale, n - n * 99 / 100)];
    Observation::Latency { buckets, quantile: 0.99, value: 0.050 * scale }
}

/// Observations for the default template's four checks.
fn default_observed(
    errors: (Observation, Observation),
    latencies: (Observation, Observation),
) -> Vec<Result<Observed, String>> {
    vec![
        Ok(Observed::new(errors.0.clone(), errors.1.clone())),
        Ok(Observed::new(latencies.0.clone(), latencies.1.clone())),
        Ok(Observed::new(errors.0, errors.1)),
        Ok(Observed::new(latencies.0, latencies.1)),
    ]
}

fn check<'a>(verdict: &'a proto::Verdict, name: &str) -> &'a proto::CheckResult {
    verdict.checks.iter().find(|check| check.name == name).unwrap()
}

#[test]
fn a_healthy_canary_passes_the_default_template() {
    let observed =
        default_observed((rate(500, 100_000), rate(26, 5_000)), (latency(100_000, 1.0), latency(5_000, 1.0)));
    let verdict = default_judge(Some(1)).judge(&observed, SystemTime::now());
    assert_eq!(verdict.outcome(), Outcome::Pass, "{verdict:#?}");
    assert_eq!(verdict.score, 100.0);
    assert_eq!(verdict.sequence, 1);
    let errors = check(&verdict, "error-rate-vs-baseline");
    assert_eq!(errors.rule, "canary error rate not above baseline + 0.1% (p < 0.0286)");
    assert_eq!((errors.baseline_samples, errors.canary_samples), (100_000, 5_000));
    assert!(errors.p_value.is_some());
    assert_eq!(check(&verdict, "p99-latency").rule, "canary <= max(1.5 x baseline, baseline + 1 ms) (p < 0.0071)");
}

#[test]
fn a_canary_far_above_one_percent_fails_on_its_own() {
    let observed =
        default_observed((rate(500, 100_000), rate(150, 5_000)), (latency(100_000, 1.0), latency(5_000, 1.0)));
    let verdict = default_judge(Some(1)).judge(&observed, SystemTime::now());
    assert_eq!(verdict.outcome(), Outcome::Fail);
    assert_eq!(check(&verdict, "error-rate").outcome(), Outcome::Fail);
    assert!(verdict.reason.starts_with("critical check `error-rate` failed"), "{}", verdict.reason);
}

#[test]
fn a_few_errors_above_one_percent_are_not_yet_a_failure() {
    // 3 errors in 200 requests is 1.5%, but a 1% canary makes that often enough.
    let observed = default_observed((rate(500, 100_000), rate(3, 200)), (latency(100_000, 1.0), latency(200, 1.0)));
    let verdict = default_judge(Some(1)).judge(&observed, SystemTime::now());
    let errors = check(&verdict, "error-rate");
    assert_eq!(errors.outcome(), Outcome::Inconclusive, "{errors:#?}");
    assert!(errors.reason.contains("not significantly yet"), "{}", errors.reason);
    assert_eq!(verdict.outcome(), Outcome::Inconclusive);
}

#[test]
fn a_doubled_p99_fails_the_relative_rule() {
    let observed =
        default_observed((rate(500, 100_000), rate(25, 5_000)), (latency(100_000, 1.0), latency(5_000, 2.0)));
    let verdict = default_judge(Some(1)).judge(&observed, SystemTime::now());
    let p99 = check(&verdict, "p99-latency");
    assert_eq!(p99.outcome(), Outcome::Fail, "{p99:#?}");
    assert_eq!((p99.baseline_value, p99.canary_value), (0.05, 0.1));
    assert_eq!(verdict.outcome(), Outcome::Fail);
}

#[test]
fn too_few_samples_are_inconclusive_never_pass() {
    let observed = default_observed((rate(0, 50), rate(0, 50)), (latency(50, 1.0), latency(50, 1.0)));
    let verdict = default_judge(Some(1)).judge(&observed, SystemTime::now());
    assert!(verdict.checks.iter().all(|check| check.outcome() == Outcome::Inconclusive));
    assert!(verdict.checks[0].reason.starts_with("too few samples"), "{}", verdict.checks[0].reason);
    assert_eq!(verdict.outcome(), Outcome::Inconclusive);
}

#[test]
fn a_failed_source_is_inconclusive_with_its_error() {
    let mut observed =
        default_observed((rate(500, 100_000), rate(25, 5_000)), (latency(100_000, 1.0), latency(5_000, 1.0)));
    observed[1] = Err("Prometheus at http://prom:9090 unreachable".to_owned());
    let verdict = default_judge(Some(1)).judge(&observed, SystemTime::now());
    let p99 = check(&verdict, "p99-latency");
    assert_eq!(p99.outcome(), Outcome::Inconclusive);
    assert!(p99.reason.contains("unreachable"));
    assert_eq!(verdict.outcome(), Outcome::Inconclusive);
}

#[test]
fn missing_observations_are_failed_sources() {
    let verdict = default_judge(Some(1)).judge(&[], SystemTime::now());
    assert_eq!(verdict.outcome(), Outcome::Inconclusive);
    assert_eq!(verdict.checks.len(), 4);
}

#[test]
fn nan_values_and_empty_histograms_do_not_panic_and_do_not_pass() {
    let empty = Observation::Latency { buckets: vec![], quantile: 0.99, value: f64::NAN };
    let observed = vec![
        Ok(Observed {
            baseline: rate(0, 0),
            canary: rate(0, 0),
            note: None,
            periods: Vec::new(),
            baseline_halves: None,
        }),
        Ok(Observed { baseline: empty.clone(), canary: empty, note: None, periods: Vec::new(), baseline_halves: None }),
        Ok(Observed {
            baseline: Observation::Value { value: f64::NAN, samples: 1000 },
            canary: Observation::Value { value: 1.0, samples: 1000 },
            note: None,
            periods: Vec::new(),
            baseline_halves: None,
        }),
    ];
    for planned in [Some(1), None] {
        let verdict = default_judge(planned).judge(&observed, SystemTime::now());
        assert!(verdict.checks.iter().all(|check| check.outcome() == Outcome::Inconclusive), "{verdict:#?}");
        assert!(verdict.checks.iter().all(|check| check.baseline_value.is_finite()));
    }
    // With no minimum, zero trials still cannot be tested.
    let mut template = Template::from_proto(&default_template(), "template").unwrap();
    template.checks.iter_mut().for_each(|check| check.min_samples = 0);
    let verdict = Judge::new(template, None).judge(&observed, SystemTime::now());
    assert!(verdict.checks.iter().all(|check| check.outcome() == Outcome::Inconclusive), "{verdict:#?}");
}

#[test]
fn sequences_count_from_one() {
    let observed = default_observed((rate(50, 10_000), rate(3, 500)), (latency(10_000, 1.0), latency(500, 1.0)));
    let mut judge = default_judge(None);
    let sequences: Vec<u64> = (0..3).map(|_| judge.judge(&observed, SystemTime::now()).sequence).collect();
    assert_eq!(sequences, [1, 2, 3]);
}

#[test]
fn a_sequential_failure_stays_failed() {
    let mut judge = default_judge(None);
    let bad = default_observed((rate(500, 100_000), rate(60, 5_000)), (latency(100_000, 1.0), latency(5_000, 1.0)));
    let first = judge.judge(&bad, SystemTime::now());
    let errors = check(&first, "error-rate-vs-baseline");
    assert_eq!(errors.outcome(), Outcome::Fail, "{errors:#?}");
    // Even a source failure afterwards does not undo it.
    let later = judge
        .judge(&[Err("timeout".to_owned()), Err("timeout".to_owned()), Err("timeout".to_owned())], SystemTime::now());
    let errors = check(&later, "error-rate-vs-baseline");
    assert_eq!(errors.outcome(), Outcome::Fail);
    assert!(errors.reason.starts_with("failed at judgement 1"), "{}", errors.reason);
    assert_eq!(later.outcome(), Outcome::Fail);
}

#[test]
fn the_sequential_test_needs_more_evidence_than_a_single_look() {
    // Just significant for a one-shot test at the check's share of alpha, not for the always-valid one.
    let observed =
        default_observed((rate(5_000, 1_000_000), rate(45, 5_000)), (latency(1000, 1.0), latency(1000, 1.0)));
    let one_shot = default_judge(Some(1)).judge(&observed, SystemTime::now());
    let sequential = default_judge(None).judge(&observed, SystemTime::now());
    let (one_shot, sequential) =
        (check(&one_shot, "error-rate-vs-baseline"), check(&sequential, "error-rate-vs-baseline"));
    assert_eq!(one_shot.outcome(), Outcome::Fail, "{one_shot:#?}");
    assert_eq!(sequential.outcome(), Outcome::Pass, "{sequential:#?}");
    assert!(sequential.p_value.unwrap() > one_shot.p_value.unwrap());
}

#[test]
fn shrinking_counts_switch_to_alpha_spending() {
    let mut judge = default_judge(Some(60));
    let big = default_observed((rate(500, 100_000), rate(25, 5_000)), (latency(100_000, 1.0), latency(5_000, 1.0)));
    let small = default_observed((rate(250, 50_000), rate(12, 2_500)), (latency(50_000, 1.0), latency(2_500, 1.0)));
    judge.judge(&big, SystemTime::now());
    assert!(!judge.sliding);
    judge.judge(&small, SystemTime::now());
    assert!(judge.sliding);
}

#[test]
fn statistical_latency_rules_use_the_relative_margin() {
    let statistical = |margin: f64| proto::AnalysisTemplate {
        checks: vec![proto::Check {
            name: "latency".to_owned(),
            metric: Some(proto::Metric {
                source: Some(Source::Builtin(proto::BuiltinMetric { kind: Kind::Latency.into(), quantile: None })),
            }),
            rule: Some(ProtoRule::Statistical(proto::Statistical { margin })),
            weight: None,
            critical: true,
            min_samples: None,
            alpha_weight: None,
        }],
        ..Default::default()
    };
    let observed = [Ok(Observed {
        baseline: latency(100_000, 1.0),
        canary: latency(5_000, 1.2),
        note: None,
        periods: Vec::new(),
        baseline_halves: None,
    })];
    let judge_with = |margin| {
        Judge::new(Template::from_proto(&statistical(margin), "template").unwrap(), Some(1))
            .judge(&observed, SystemTime::now())
    };
    // 20% slower: fails with no margin, passes with a 25% margin.
    assert_eq!(judge_with(0.0).outcome(), Outcome::Fail);
    let tolerated = judge_with(0.25);
    assert_eq!(tolerated.outcome(), Outcome::Pass, "{tolerated:#?}");
    assert_eq!(tolerated.checks[0].rule, "canary latency not above baseline + 25% (p < 0.05)");
}

#[test]
fn plain_values_compare_numbers() {
    let fixed = |rule: ProtoRule| proto::AnalysisTemplate {
        checks: vec![proto::Check {
            name: "restarts".to_owned(),
            metric: Some(proto::Metric {
                source: Some(Source::Fixed(proto::FixedMetric { baseline: 0.0, canary: 3.0, samples: 1000 })),
            }),
            rule: Some(rule),
            weight: None,
            critical: false,
            min_samples: None,
            alpha_weight: None,
        }],
        ..Default::default()
    };
    let observed = [Ok(Observed {
        baseline: Observation::Value { value: 0.0, samples: 1000 },
        canary: Observation::Value { value: 3.0, samples: 1000 },
        note: None,
        periods: Vec::new(),
        baseline_halves: None,
    })];
    let judge_with = |rule| {
        Judge::new(Template::from_proto(&fixed(rule), "template").unwrap(), None).judge(&observed, SystemTime::now())
    };
    let threshold = judge_with(ProtoRule::Threshold(proto::Threshold { max: Some(2.0), min: None }));
    assert_eq!(threshold.checks[0].outcome(), Outcome::Fail);
    assert_eq!(threshold.checks[0].rule, "canary <= 2");
    assert_eq!(threshold.checks[0].p_value, None);
    // canary <= 1.5 x 0 does not hold for 3 restarts.
    let relative = judge_with(ProtoRule::Relative(proto::Relative { max_ratio: 1.5, min_difference: None }));
    assert_eq!(relative.checks[0].outcome(), Outcome::Fail);
    assert_eq!(relative.outcome(), Outcome::Fail);
}

fn single(metric: Source, rule: ProtoRule) -> Template {
    let template = proto::AnalysisTemplate {
        checks: vec![proto::Check {
            name: "only".to_owned(),
            metric: Some(proto::Metric { source: Some(metric) }),
            rule: Some(rule),
            weight: None,
            critical: true,
            min_samples: None,
            alpha_weight: None,
        }],
        ..Default::default()
    };
    Template::from_proto(&template, "template").unwrap()
}

fn error_rate() -> Source {
    Source::Builtin(proto::BuiltinMetric { kind: Kind::ErrorRate.into(), quantile: None })
}

#[test]
fn sliding_windows_spend_alpha_look_by_look() {
    let template = single(error_rate(), ProtoRule::Statistical(proto::Statistical { margin: 0.0 }));
    // 40 vs 25 expected errors: p ≈ 0.004, enough for one look at 0.05, not for 1/61 of it.
    let observed = [Ok(Observed {
        baseline: rate(500, 100_000),
        canary: rate(40, 5_000),
        note: None,
        periods: Vec::new(),
        baseline_halves: None,
    })];
    let one_shot = Judge::new(template.clone(), Some(1)).judge(&observed, SystemTime::now());
    assert_eq!(one_shot.outcome(), Outcome::Fail, "{one_shot:#?}");
    let mut sliding = Judge::new(template, Some(60)).with_sliding_window();
    let verdict = sliding.judge(&observed, SystemTime::now());
    assert_eq!(verdict.outcome(), Outcome::Pass, "{verdict:#?}");
    let p = verdict.checks[0].p_value.unwrap();
    assert!((p / one_shot.checks[0].p_value.unwrap() - 61.0).abs() < 1e-6, "{p}");
}

#[test]
fn relative_rules_on_rates_are_tested() {
    let template = single(error_rate(), ProtoRule::Relative(proto::Relative { max_ratio: 1.5, min_difference: None }));
    let judge_with = |canary| {
        let observed = [Ok(Observed {
            baseline: rate(1_000, 100_000),
            canary,
            note: None,
            periods: Vec::new(),
            baseline_halves: None,
        })];
        Judge::new(template.clone(), Some(1)).judge(&observed, SystemTime::now()).checks.remove(0)
    };
    // 1.2% vs 1%: within 1.5 x.
    assert_eq!(judge_with(rate(60, 5_000)).outcome(), Outcome::Pass);
    // 2% vs 1% over 200 requests: above 1.5 x, but 4 errors prove little.
    assert_eq!(judge_with(rate(4, 200)).outcome(), Outcome::Inconclusive);
    // 3% vs 1% over 5000 requests: clearly above.
    let fail = judge_with(rate(150, 5_000));
    assert_eq!(fail.outcome(), Outcome::Fail, "{fail:#?}");
    assert_eq!(fail.rule, "canary <= 1.5 x baseline (p < 0.05)");
}

#[test]
fn a_rate_floor_fails_only_when_significantly_below() {
    let success = Source::Prometheus(proto::PrometheusMetric {
        query: "success_ratio{backend=\"{{backend}}\"}".to_owned(),
        value_kind: proto::prometheus_metric::ValueKind::Rate.into(),
        samples_query: "requests{backend=\"{{backend}}\"}".to_owned(),
        ..Default::default()
    });
    let template = single(success, ProtoRule::Threshold(proto::Threshold { max: None, min: Some(0.99) }));
    let judge_with = |canary| {
        let observed = [Ok(Observed {
            baseline: rate(9_950, 10_000),
            canary,
            note: None,
            periods: Vec::new(),
            baseline_halves: None,
        })];
        Judge::new(template.clone(), Some(1)).judge(&observed, SystemTime::now()).checks.remove(0)
    };
    assert_eq!(judge_with(rate(995, 1_000)).outcome(), Outcome::Pass);
    assert_eq!(judge_with(rate(987, 1_000)).outcome(), Outcome::Inconclusive);
    assert_eq!(judge_with(rate(950, 1_000)).outcome(), Outcome::Fail);
}

#[test]
fn an_observation_of_the_wrong_shape_is_inconclusive() {
    let template = single(error_rate(), ProtoRule::Statistical(proto::Statistical { margin: 0.0 }));
    let value = |value| Observation::Value { value, samples: 1_000 };
    let observed = [Ok(Observed {
        baseline: value(0.0),
        canary: value(1.0),
        note: None,
        periods: Vec::new(),
        baseline_halves: None,
    })];
    let verdict = Judge::new(template, None).judge(&observed, SystemTime::now());
    assert_eq!(verdict.checks[0].outcome(), Outcome::Inconclusive, "{verdict:#?}");
}

#[test]
fn a_resumed_judge_continues_the_tests_where_they_stood() {
    let looks = [
        default_observed((rate(50, 10_000), rate(9, 500)), (latency(10_000, 1.0), latency(500, 1.0))),
        default_observed((rate(100, 20_000), rate(16, 1_000)), (latency(20_000, 1.0), latency(1_000, 1.0))),
        default_observed((rate(150, 30_000), rate(24, 1_500)), (latency(30_000, 1.0), latency(1_500, 1.0))),
    ];
    let now = SystemTime::now();
    let mut straight = default_judge(None);
    let expected: Vec<proto::Verdict> = looks.iter().map(|look| straight.judge(look, now)).collect();

    let mut first = default_judge(None);
    first.judge(&looks[0], now);
    // Through storage, as a restarted service reads it.
    let stored = serde_json::to_vec(&first.saved()).expect("json");
    let mut resumed = default_judge(None).resume(serde_json::from_slice(&stored).expect("json"));
    let continued: Vec<proto::Verdict> = looks[1..].iter().map(|look| resumed.judge(look, now)).collect();
    assert_eq!(continued, expected[1..], "resuming is the same as never stopping");
    assert_eq!(continued[0].sequence, 2);

    // A state of another template is ignored rather than mixed in.
    let other = Judge::new(single(error_rate(), ProtoRule::Statistical(proto::Statistical { margin: 0.0 })), None);
    let fresh = other.resume(first.saved());
    assert_eq!(fresh.saved().looks, 0);
}

/// The default template's observations with the baseline split in `halves`.
fn with_halves(
    errors: (Observation, Observation, [Observation; 2]),
    latencies: (Observation, Observation, [Observation; 2]),
) -> Vec<Result<Observed, String>> {
    let observed = |(baseline, canary, halves): (Observation, Observation, [Observation; 2])| Observed {
        baseline_halves: Some(halves),
        ..Observed::new(baseline, canary)
    };
    let (errors, latencies) = (observed(errors), observed(latencies));
    vec![Ok(errors.clone()), Ok(latencies.clone()), Ok(errors), Ok(latencies)]
}

#[test]
fn a_canary_is_called_worse_only_by_more_than_the_baseline_differs_from_itself() {
    // The canary's p99 is twice the baseline's and its errors are up by 0.4 points: both
    // significant on their own.
    let errors = (rate(500, 100_000), rate(45, 5_000));
    let latencies = (latency(100_000, 1.0), latency(5_000, 2.0));

    // Halves alike: the canary is far beyond the baseline's own noise and fails.
    let steady = with_halves(
        (errors.0.clone(), errors.1.clone(), [rate(250, 50_000), rate(250, 50_000)]),
        (latencies.0.clone(), latencies.1.clone(), [latency(50_000, 1.0), latency(50_000, 1.05)]),
    );
    let verdict = default_judge(Some(1)).judge(&steady, SystemTime::now());
    let p99 = check(&verdict, "p99-latency");
    assert_eq!(p99.outcome(), Outcome::Fail, "{p99:#?}");
    assert!(p99.reason.contains("baseline against itself: 50 ms vs 52.5 ms"), "{}", p99.reason);
    let noise = p99.baseline_noise.as_ref().expect("the baseline against itself is in the verdict");
    let close = |value: f64, expected: f64| (value - expected).abs() < 1e-12;
    assert!(close(noise.first_value, 0.05) && close(noise.second_value, 0.0525), "{noise:?}");
    assert!(close(noise.difference, 0.0025), "{noise:?}");
    let errors_vs_baseline = check(&verdict, "error-rate-vs-baseline");
    assert_eq!(errors_vs_baseline.outcome(), Outcome::Fail, "{errors_vs_baseline:#?}");
    assert!(errors_vs_baseline.reason.contains("baseline against itself: 0.5% vs 0.5%"), "{errors_vs_baseline:#?}");
    assert_eq!(verdict.outcome(), Outcome::Fail);

    // Halves as far apart as the canary is from the baseline: the same canary is not called
    // worse, and the verdict says why.
    let noisy = with_halves(
        (errors.0.clone(), errors.1.clone(), [rate(150, 50_000), rate(350, 50_000)]),
        (latencies.0.clone(), latencies.1.clone(), [latency(50_000, 0.9), latency(50_000, 2.0)]),
    );
    let verdict = default_judge(Some(1)).judge(&noisy, SystemTime::now());
    for name in ["p99-latency", "error-rate-vs-baseline"] {
        let result = check(&verdict, name);
        assert_eq!(result.outcome(), Outcome::Pass, "{result:#?}");
        assert!(result.reason.contains("but the baseline differs as much from itself"), "{}", result.reason);
    }
    // The rank test compares the halves too: one twice as slow as the other is as far apart
    // as the canary is.
    let rank = check(&verdict, "latency-vs-baseline");
    assert_eq!(rank.outcome(), Outcome::Pass, "{rank:#?}");
    assert!(rank.reason.contains("one half slower than the other in"), "{}", rank.reason);

    // Without halves the source gives no noise to show.
    let plain = default_observed(errors, latencies);
    let verdict = default_judge(Some(1)).judge(&plain, SystemTime::now());
    assert!(verdict.checks.iter().all(|check| check.baseline_noise.is_none()));
    assert_eq!(check(&verdict, "p99-latency").outcome(), Outcome::Fail);
}

#[test]
fn halves_too_small_to_compare_leave_the_check_alone() {
    // Each half must hold half the check's minimum sample: 5 requests are not a measure of
    // anything.
    let observed = with_halves(
        (rate(500, 100_000), rate(45, 5_000), [rate(0, 5), rate(5, 5)]),
        (latency(100_000, 1.0), latency(5_000, 2.0), [latency(5, 1.0), latency(5, 3.0)]),
    );
    let verdict = default_judge(Some(1)).judge(&observed, SystemTime::now());
    assert!(verdict.checks.iter().all(|check| check.baseline_noise.is_none()), "{verdict:#?}");
    assert_eq!(check(&verdict, "p99-latency").outcome(), Outcome::Fail);
}
