//! The statistics agree with scipy on committed reference values.
//!
//! `fixtures/reference.json` is produced by `fixtures/make_reference.py` (see its header to
//! regenerate); this test only reads it. Tolerances are stated in the file.

use ficus_analysis::statistics::{
    Evidence, normal_sf,
    proportion::{self, Counts},
    rank,
    sequential::ln_mixture_likelihood_ratio,
};
use serde_json::Value;

fn reference() -> Value {
    let text = include_str!("fixtures/reference.json");
    serde_json::from_str(text).expect("reference.json is valid JSON")
}

fn number(value: &Value) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("not a number: {value}"))
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("not a count: {value}"))
}

fn counts(pair: &Value) -> Counts {
    Counts::new(count(&pair[0]), count(&pair[1])).expect("failures <= trials")
}

fn buckets(value: &Value) -> Vec<(f64, u64)> {
    value.as_array().unwrap().iter().map(|bucket| (number(&bucket[0]), count(&bucket[1]))).collect()
}

struct Tolerance {
    relative: f64,
    absolute: f64,
}

impl Tolerance {
    fn assert_close(&self, what: &str, actual: f64, expected: f64) {
        let allowed = self.absolute.max(self.relative * expected.abs());
        assert!((actual - expected).abs() <= allowed, "{what}: {actual} vs scipy's {expected} (allowed {allowed:e})");
    }
}

fn p_tolerance(reference: &Value) -> Tolerance {
    Tolerance {
        relative: number(&reference["tolerance"]["p_value_relative"]),
        absolute: number(&reference["tolerance"]["p_value_absolute"]),
    }
}

#[test]
fn normal_tails_match_scipy() {
    let reference = reference();
    let tolerance = p_tolerance(&reference);
    for case in reference["normal"].as_array().unwrap() {
        let z = number(&case["z"]);
        tolerance.assert_close(&format!("sf({z})"), normal_sf(z), number(&case["sf"]));
    }
}

#[test]
fn fisher_exact_matches_scipy() {
    let reference = reference();
    let tolerance = p_tolerance(&reference);
    for case in reference["fisher"].as_array().unwrap() {
        let (canary, baseline) = (counts(&case["canary"]), counts(&case["baseline"]));
        let p = proportion::fisher_greater(canary, baseline).unwrap();
        tolerance.assert_close(&format!("fisher {canary:?} {baseline:?}"), p, number(&case["p_value"]));
    }
}

#[test]
fn binomial_tails_match_scipy() {
    let reference = reference();
    let tolerance = p_tolerance(&reference);
    for case in reference["binomial"].as_array().unwrap() {
        let observed = Counts::new(count(&case["failures"]), count(&case["trials"])).unwrap();
        let bound = number(&case["bound"]);
        let above = proportion::above_bound(observed, bound).unwrap();
        tolerance.assert_close(&format!("above {observed:?} {bound}"), above.p_value, number(&case["above_p_value"]));
        let below = proportion::below_bound(observed, bound).unwrap();
        tolerance.assert_close(&format!("below {observed:?} {bound}"), below.p_value, number(&case["below_p_value"]));
    }
}

#[test]
fn two_sample_tests_match_scipy() {
    let reference = reference();
    let tolerance = p_tolerance(&reference);
    let rate_tolerance =
        Tolerance { relative: number(&reference["tolerance"]["restricted_rate_relative"]), absolute: 1e-12 };
    for case in reference["two_sample"].as_array().unwrap() {
        let (canary, baseline) = (counts(&case["canary"]), counts(&case["baseline"]));
        let (ratio, margin) = (number(&case["ratio"]), number(&case["margin"]));
        let what = format!("{canary:?} vs {baseline:?}, ratio {ratio}, margin {margin}");
        let rate = proportion::restricted_baseline_rate(canary, baseline, ratio, margin).unwrap();
        rate_tolerance.assert_close(&format!("restricted rate of {what}"), rate, number(&case["restricted_rate"]));
        let comparison = proportion::above_baseline(canary, baseline, ratio, margin).unwrap();
        assert_eq!(comparison.exact, case["exact"].as_bool().unwrap(), "exact switch of {what}");
        rate_tolerance.assert_close(
            &format!("variance of {what}"),
            comparison.evidence.variance,
            number(&case["variance"]),
        );
        tolerance.assert_close(&format!("p-value of {what}"), comparison.evidence.p_value, number(&case["p_value"]));
    }
}

#[test]
fn above_the_exact_switch_the_normal_approximation_tracks_fisher() {
    // Where the p-value is large enough to matter for a decision, the continuity-corrected
    // normal approximation is within 10% of Fisher's exact p-value once the smallest
    // expected cell is 50 or more.
    let reference = reference();
    let mut compared = 0;
    for case in reference["two_sample"].as_array().unwrap() {
        let plain = number(&case["ratio"]) == 1.0 && number(&case["margin"]) == 0.0;
        let fisher = number(&case["fisher_p_value"]);
        if plain && !case["exact"].as_bool().unwrap() && fisher > 1e-3 {
            let normal = number(&case["normal_p_value"]);
            assert!((normal / fisher - 1.0).abs() < 0.1, "normal {normal} vs Fisher {fisher}");
            compared += 1;
        }
    }
    assert!(compared >= 2);
}

#[test]
fn mann_whitney_matches_scipy_on_expanded_histograms() {
    let reference = reference();
    let tolerance = p_tolerance(&reference);
    let u_tolerance = Tolerance { relative: 1e-12, absolute: number(&reference["tolerance"]["u_absolute"]) };
    for case in reference["mann_whitney"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let test =
            rank::mann_whitney_greater(&buckets(&case["canary"]), &buckets(&case["baseline"]), number(&case["margin"]))
                .unwrap_or_else(|| panic!("{name}: no test"));
        u_tolerance.assert_close(&format!("U of {name}"), test.u, number(&case["u"]));
        tolerance.assert_close(&format!("p-value of {name}"), test.p_value, number(&case["p_value"]));
    }
}

#[test]
fn the_mixture_ratio_matches_numerical_integration() {
    let reference = reference();
    let tolerance = Tolerance { relative: 0.0, absolute: number(&reference["tolerance"]["ln_ratio_absolute"]) };
    for case in reference["mixture"].as_array().unwrap() {
        let evidence = Evidence {
            excess: number(&case["excess"]),
            variance: number(&case["variance"]),
            p_value: 1.0,
            correction: 0.0,
        };
        let tau = number(&case["tau"]);
        tolerance.assert_close(
            &format!("ln Λ of {evidence:?}, τ {tau}"),
            ln_mixture_likelihood_ratio(&evidence, tau),
            number(&case["ln_ratio"]),
        );
    }
}
