//! Turning check results into one verdict: a weighted score and the rules around it.
//!
//! - The score is the weighted share of passing checks among those that could be scored,
//!   0 to 100. INCONCLUSIVE checks are left out of it: they say nothing either way.
//! - A critical check that fails fails the verdict on its own.
//! - Nothing scored (every check inconclusive, or only zero weights): INCONCLUSIVE.
//! - Below `marginal_score`: FAIL.
//! - A critical check that is INCONCLUSIVE caps the verdict at INCONCLUSIVE: what must hold
//!   has not been shown to hold.
//! - At or above `pass_score`: PASS; otherwise INCONCLUSIVE.

use std::time::SystemTime;

use ficus_proto::analysis::v1::{self as proto, Outcome};

use super::template::Template;

/// The weighted share (0 to 100) of passing checks among the PASS and FAIL ones; `None`
/// when none of them carries weight.
pub fn score(checks: &[proto::CheckResult]) -> Option<f64> {
    let (passed, scored) = checks.iter().fold((0.0, 0.0), |(passed, scored), check| match check.outcome() {
        Outcome::Pass => (passed + check.weight, scored + check.weight),
        Outcome::Fail => (passed, scored + check.weight),
        Outcome::Inconclusive | Outcome::Unspecified => (passed, scored),
    });
    (scored > 0.0).then(|| 100.0 * passed / scored)
}

/// The verdict of `checks` under `template`'s thresholds.
pub(crate) fn verdict(
    template: &Template,
    checks: Vec<proto::CheckResult>,
    sequence: u64,
    now: SystemTime,
) -> proto::Verdict {
    let score = score(&checks);
    let (outcome, reason) = outcome(template, &checks, score);
    proto::Verdict {
        outcome: outcome.into(),
        score: score.unwrap_or(0.0),
        reason,
        checks,
        judged_at: Some(ficus_proto::time::timestamp(now)),
        sequence,
    }
}

fn outcome(template: &Template, checks: &[proto::CheckResult], score: Option<f64>) -> (Outcome, String) {
    let with = |outcome: Outcome| checks.iter().filter(move |check| check.outcome() == outcome);
    if let Some(failed) = with(Outcome::Fail).find(|check| check.critical) {
        return (Outcome::Fail, format!("critical check `{}` failed: {}", failed.name, failed.reason));
    }
    let Some(score) = score else {
        let first = with(Outcome::Inconclusive).next();
        let why = first.map_or_else(String::new, |check| format!(": `{}`: {}", check.name, check.reason));
        return (Outcome::Inconclusive, format!("no check could be scored{why}"));
    };
    let shown = super::check::format_number(score);
    if score < template.marginal_score {
        let failed: Vec<String> = with(Outcome::Fail).map(|check| format!("`{}`", check.name)).collect();
        return (
            Outcome::Fail,
            format!(
                "score {shown} is below {}; failed: {}",
                super::check::format_number(template.marginal_score),
                failed.join(", ")
            ),
        );
    }
    if let Some(unknown) = with(Outcome::Inconclusive).find(|check| check.critical) {
        return (
            Outcome::Inconclusive,
            format!("critical check `{}` is inconclusive: {}", unknown.name, unknown.reason),
        );
    }
    let passed = with(Outcome::Pass).count();
    let scored = passed + with(Outcome::Fail).count();
    let unscored = with(Outcome::Inconclusive).count();
    let unscored = if unscored > 0 { format!(", {unscored} inconclusive and not scored") } else { String::new() };
    if score >= template.pass_score {
        (Outcome::Pass, format!("score {shown}: {passed} of {scored} checks passed{unscored}"))
    } else {
        (
            Outcome::Inconclusive,
            format!(
                "score {shown} is below {} to pass: {passed} of {scored} checks passed{unscored}",
                super::check::format_number(template.pass_score)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, outcome: Outcome, critical: bool, weight: f64) -> proto::CheckResult {
        proto::CheckResult {
            name: name.to_owned(),
            outcome: outcome.into(),
            critical,
            weight,
            reason: format!("{name} says so"),
            ..Default::default()
        }
    }

    fn template() -> Template {
        Template { checks: vec![], pass_score: 95.0, marginal_score: 75.0, alpha: 0.05 }
    }

    fn judge(checks: Vec<proto::CheckResult>) -> proto::Verdict {
        verdict(&template(), checks, 1, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn a_failing_critical_check_fails_whatever_the_score() {
        let mut checks: Vec<_> = (0..20).map(|i| result(&format!("c{i}"), Outcome::Pass, false, 1.0)).collect();
        checks.push(result("errors", Outcome::Fail, true, 1.0));
        let verdict = judge(checks);
        assert_eq!(verdict.outcome(), Outcome::Fail);
        assert!(verdict.score > 95.0);
        assert!(verdict.reason.contains("`errors`"), "{}", verdict.reason);
    }

    #[test]
    fn inconclusive_checks_are_not_scored() {
        let verdict =
            judge(vec![result("a", Outcome::Pass, false, 1.0), result("b", Outcome::Inconclusive, false, 3.0)]);
        assert_eq!(verdict.outcome(), Outcome::Pass);
        assert_eq!(verdict.score, 100.0);
    }

    #[test]
    fn an_inconclusive_critical_check_caps_the_verdict() {
        let verdict =
            judge(vec![result("a", Outcome::Pass, false, 1.0), result("b", Outcome::Inconclusive, true, 1.0)]);
        assert_eq!(verdict.outcome(), Outcome::Inconclusive);
        assert!(verdict.reason.contains("`b`"));
    }

    #[test]
    fn nothing_scored_is_inconclusive() {
        let verdict = judge(vec![result("a", Outcome::Inconclusive, false, 1.0)]);
        assert_eq!(verdict.outcome(), Outcome::Inconclusive);
        assert_eq!(verdict.score, 0.0);
    }

    #[test]
    fn scores_map_to_outcomes_by_threshold() {
        let weighted = |pass: f64, fail: f64| {
            judge(vec![result("p", Outcome::Pass, false, pass), result("f", Outcome::Fail, false, fail)])
        };
        assert_eq!(weighted(96.0, 4.0).outcome(), Outcome::Pass);
        assert_eq!(weighted(80.0, 20.0).outcome(), Outcome::Inconclusive);
        assert_eq!(weighted(70.0, 30.0).outcome(), Outcome::Fail);
        assert_eq!(weighted(70.0, 30.0).score, 70.0);
    }
}
