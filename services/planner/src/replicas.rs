//! Rolling-update arithmetic for rollouts that also scale: how many pods each side runs at a
//! weight, and the pod budget of every step.
//!
//! The rules are the Kubernetes Deployment ones: `maxSurge` and `maxUnavailable` are each a
//! count (`2`) or a percentage of the replicas (`25%`); a percentage surge rounds **up** and a
//! percentage unavailability rounds **down**, so a budget never reads as "no surge" or "more
//! unavailable than asked" because of rounding; both resolving to zero is refused, since such
//! an update could never make progress. 10 replicas at 25%/25% allow 13 pods and keep 8
//! available; 3 replicas at 50%/50% give a surge of 2 and 1 unavailable.
//!
//! ```
//! use ficus_planner::replicas::Scaling;
//!
//! let scaling = Scaling::new(10, "25%", "25%").expect("valid budget");
//! assert_eq!((scaling.max_pods(), scaling.min_available()), (13, 8));
//! ```

use std::fmt;

use ficus_proto::planner::v1 as proto;

use crate::spec::FULL_WEIGHT;

/// `maxSurge` when the spec leaves it empty, as in Kubernetes.
pub const DEFAULT_MAX_SURGE: &str = "25%";

/// `maxUnavailable` when the spec leaves it empty, as in Kubernetes.
pub const DEFAULT_MAX_UNAVAILABLE: &str = "25%";

/// Why a `maxSurge` or `maxUnavailable` value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Neither a count nor a percentage.
    #[error("`{0}` is neither a count like `2` nor a percentage like `25%`")]
    Malformed(String),
    /// A percentage above 100.
    #[error("`{0}` is above 100%")]
    AboveHundredPercent(String),
}

/// Resolves a `maxSurge` / `maxUnavailable` value against `replicas`: a count is taken as is,
/// a percentage of `replicas` is rounded up when `round_up` (surge) and down otherwise
/// (unavailable). Only plain digits are accepted (no sign, no spaces, no fractions), as
/// Kubernetes' IntOrString does.
pub fn resolve(value: &str, replicas: u32, round_up: bool) -> Result<u32, ValueError> {
    let malformed = || ValueError::Malformed(value.to_owned());
    let (digits, percent) = match value.strip_suffix('%') {
        Some(digits) => (digits, true),
        None => (value, false),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    // Digits only, so the only parse failure left is overflow.
    let number: u32 = digits.parse().map_err(|_| malformed())?;
    if !percent {
        return Ok(number);
    }
    if number > 100 {
        return Err(ValueError::AboveHundredPercent(value.to_owned()));
    }
    // u64 so that replicas × 100 cannot overflow; the result is at most `replicas`.
    let scaled = u64::from(replicas) * u64::from(number);
    let resolved = if round_up { scaled.div_ceil(100) } else { scaled / 100 };
    u32::try_from(resolved).map_err(|_| malformed())
}

/// Why a scaling section was refused; the spec maps each case to its field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScalingError {
    /// `replicas` is zero.
    #[error("at least 1 replica")]
    NoReplicas,
    /// `max_surge` is malformed.
    #[error("max_surge: {0}")]
    MaxSurge(ValueError),
    /// `max_unavailable` is malformed.
    #[error("max_unavailable: {0}")]
    MaxUnavailable(ValueError),
    /// Both resolve to zero: the update could neither add nor remove a pod.
    #[error("max_surge and max_unavailable both resolve to 0 for {replicas} replicas; one must allow at least 1 pod")]
    BothZero {
        /// The replicas they were resolved against.
        replicas: u32,
    },
}

/// A validated scaling section with its budget resolved to pod counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scaling {
    /// Total replicas across stable and canary.
    pub replicas: u32,
    /// Extra pods allowed during a step.
    pub max_surge: u32,
    /// Pods that may be unavailable during a step.
    pub max_unavailable: u32,
}

impl Scaling {
    /// Resolves `max_surge` and `max_unavailable` against `replicas`; an empty value takes the
    /// Kubernetes default (25%).
    pub fn new(replicas: u32, max_surge: &str, max_unavailable: &str) -> Result<Self, ScalingError> {
        if replicas == 0 {
            return Err(ScalingError::NoReplicas);
        }
        let max_surge = or_default(max_surge, DEFAULT_MAX_SURGE);
        let max_unavailable = or_default(max_unavailable, DEFAULT_MAX_UNAVAILABLE);
        let max_surge = resolve(max_surge, replicas, true).map_err(ScalingError::MaxSurge)?;
        let max_unavailable = resolve(max_unavailable, replicas, false).map_err(ScalingError::MaxUnavailable)?;
        if max_surge == 0 && max_unavailable == 0 {
            return Err(ScalingError::BothZero { replicas });
        }
        Ok(Self { replicas, max_surge, max_unavailable })
    }

    /// Most pods that may exist during a step: replicas + maxSurge.
    pub fn max_pods(&self) -> u32 {
        self.replicas.saturating_add(self.max_surge)
    }

    /// Fewest pods that must stay available during a step: replicas − maxUnavailable, never
    /// below zero (a count larger than the replicas is allowed, as in Kubernetes).
    pub fn min_available(&self) -> u32 {
        self.replicas.saturating_sub(self.max_unavailable)
    }

    /// Pod counts once the canary holds `weight` basis points.
    ///
    /// Both sides serve traffic during a migration, so each is sized for its own share and
    /// rounded **up** — `canary = ⌈replicas × w⌉`, `stable = ⌈replicas × (1 − w)⌉` — as Argo
    /// Rollouts does with dynamic stable scaling: 5% of 10 replicas is 1 canary pod, not 0,
    /// and neither side is ever short of capacity for what it carries. The two may then add
    /// up to one pod more than `replicas`; that fits the budget whenever the surge is at
    /// least 1. When it would not (maxSurge 0), the stable side gives way, since traffic is
    /// leaving it, so the step never ends above [`Scaling::max_pods`].
    pub fn at_weight(&self, weight: u32) -> ReplicaPlan {
        let weight = weight.min(FULL_WEIGHT);
        let canary = share_rounded_up(self.replicas, weight);
        let stable = share_rounded_up(self.replicas, FULL_WEIGHT - weight).min(self.max_pods().saturating_sub(canary));
        ReplicaPlan { stable, canary, max_pods: self.max_pods(), min_available: self.min_available() }
    }
}

/// `value`, or `default` when the spec left it empty.
fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() { default } else { value }
}

/// ⌈replicas × basis_points / 10000⌉, at most `replicas`.
fn share_rounded_up(replicas: u32, basis_points: u32) -> u32 {
    let scaled = (u64::from(replicas) * u64::from(basis_points)).div_ceil(u64::from(FULL_WEIGHT));
    // basis_points ≤ 10000, so the share never exceeds replicas and always fits.
    u32::try_from(scaled).unwrap_or(replicas)
}

/// Pod counts of one plan step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaPlan {
    /// Stable replicas when the step is done.
    pub stable: u32,
    /// Canary replicas when the step is done.
    pub canary: u32,
    /// Most pods that may exist during the step (replicas + maxSurge).
    pub max_pods: u32,
    /// Fewest pods that must stay available (replicas − maxUnavailable).
    pub min_available: u32,
}

impl From<ReplicaPlan> for proto::ReplicaPlan {
    fn from(plan: ReplicaPlan) -> Self {
        Self { stable: plan.stable, canary: plan.canary, max_pods: plan.max_pods, min_available: plan.min_available }
    }
}

impl fmt::Display for ReplicaPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} stable + {} canary (at most {} pods, at least {} available)",
            self.stable, self.canary, self.max_pods, self.min_available
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_counts_and_percentages_with_kubernetes_rounding() {
        // (value, replicas, round_up, expected)
        let cases: &[(&str, u32, bool, Result<u32, ValueError>)] = &[
            ("25%", 10, true, Ok(3)),
            ("25%", 10, false, Ok(2)),
            ("50%", 3, true, Ok(2)),
            ("50%", 3, false, Ok(1)),
            ("25%", 1, true, Ok(1)),
            ("25%", 1, false, Ok(0)),
            ("100%", 7, false, Ok(7)),
            ("0%", 10, true, Ok(0)),
            ("0", 10, true, Ok(0)),
            ("2", 10, true, Ok(2)),
            ("15", 3, false, Ok(15)),
            ("101%", 10, true, Err(ValueError::AboveHundredPercent("101%".into()))),
            ("abc", 10, true, Err(ValueError::Malformed("abc".into()))),
            ("", 10, true, Err(ValueError::Malformed(String::new()))),
            ("%", 10, true, Err(ValueError::Malformed("%".into()))),
            ("-1", 10, true, Err(ValueError::Malformed("-1".into()))),
            ("+1", 10, true, Err(ValueError::Malformed("+1".into()))),
            ("2.5%", 10, true, Err(ValueError::Malformed("2.5%".into()))),
            (" 25%", 10, true, Err(ValueError::Malformed(" 25%".into()))),
            ("99999999999", 10, true, Err(ValueError::Malformed("99999999999".into()))),
        ];
        for (value, replicas, round_up, expected) in cases {
            assert_eq!(&resolve(value, *replicas, *round_up), expected, "{value} of {replicas}, round_up {round_up}");
        }
    }

    #[test]
    fn budget_table() {
        /// Resolved surge, resolved unavailable, max pods, min available.
        type Budget = (u32, u32, u32, u32);
        let cases: &[(u32, &str, &str, Result<Budget, ScalingError>)] = &[
            (10, "25%", "25%", Ok((3, 2, 13, 8))),
            (3, "50%", "50%", Ok((2, 1, 5, 2))),
            (1, "25%", "25%", Ok((1, 0, 2, 1))),
            (10, "", "", Ok((3, 2, 13, 8))),
            (4, "1", "0", Ok((1, 0, 5, 4))),
            (4, "0", "1", Ok((0, 1, 4, 3))),
            (3, "1", "5", Ok((1, 5, 4, 0))),
            (10, "0", "0", Err(ScalingError::BothZero { replicas: 10 })),
            (10, "0%", "0%", Err(ScalingError::BothZero { replicas: 10 })),
            (10, "0%", "0", Err(ScalingError::BothZero { replicas: 10 })),
            // 25% of 1 rounds down to 0 unavailable, so a zero surge leaves nothing to move with.
            (1, "0", "", Err(ScalingError::BothZero { replicas: 1 })),
            (10, "101%", "", Err(ScalingError::MaxSurge(ValueError::AboveHundredPercent("101%".into())))),
            (10, "", "abc", Err(ScalingError::MaxUnavailable(ValueError::Malformed("abc".into())))),
            (0, "25%", "25%", Err(ScalingError::NoReplicas)),
        ];
        for (replicas, surge, unavailable, expected) in cases {
            let got = Scaling::new(*replicas, surge, unavailable)
                .map(|s| (s.max_surge, s.max_unavailable, s.max_pods(), s.min_available()));
            assert_eq!(&got, expected, "{replicas} replicas at {surge:?}/{unavailable:?}");
        }
    }

    #[test]
    fn each_side_is_sized_for_its_share_rounded_up() {
        let scaling = Scaling::new(10, "25%", "25%").expect("valid");
        let counts = |weight| {
            let plan = scaling.at_weight(weight);
            (plan.stable, plan.canary)
        };
        assert_eq!(counts(0), (10, 0));
        assert_eq!(counts(500), (10, 1), "5% of 10 is one canary pod, stable keeps 9.5 → 10");
        assert_eq!(counts(2000), (8, 2));
        assert_eq!(counts(5000), (5, 5));
        assert_eq!(counts(10_000), (0, 10));
        let plan = scaling.at_weight(500);
        assert_eq!((plan.max_pods, plan.min_available), (13, 8));
    }

    #[test]
    fn stable_gives_way_when_there_is_no_surge() {
        let scaling = Scaling::new(3, "0", "1").expect("valid");
        let plan = scaling.at_weight(5000);
        assert_eq!((plan.stable, plan.canary), (1, 2), "⌈1.5⌉ + ⌈1.5⌉ = 4 would exceed 3 pods");
        assert!(plan.stable + plan.canary <= plan.max_pods);
        let surging = Scaling::new(3, "1", "0").expect("valid").at_weight(5000);
        assert_eq!((surging.stable, surging.canary), (2, 2));
    }
}
