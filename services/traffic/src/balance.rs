//! Choosing a backend for a request: rules first, then sticky cohorts or smooth weighted
//! round-robin.
//!
//! Smooth weighted round-robin is nginx's algorithm: every pick adds each backend's weight
//! to its running score, takes the highest score, and charges the winner the total. Any N
//! consecutive picks split as close to the weights as integers allow, evenly spread: at
//! 5%/95% the canary gets exactly every twentieth request.
//!
//! Sticky cohorts hash a stable user key into 10000 buckets and lay the backends' weights
//! over them in declaration order. A user keeps their side while the weights stay; when
//! one of two backends grows, only the buckets it gains move, so users move one way only,
//! and the share of users on each side is the weight, not whatever first-hit cookies
//! happened to pin (the drift peer tools show).

use xxhash_rust::xxh3::xxh3_64;

use crate::route::TOTAL_WEIGHT;

/// nginx's smooth weighted round-robin state for one route generation.
#[derive(Clone, Debug, Default)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    /// Picks the next backend for `weights`, or `None` when every weight is 0.
    pub fn pick(&mut self, weights: &[u32]) -> Option<usize> {
        if self.current.len() != weights.len() {
            self.current = vec![0; weights.len()];
        }
        let mut total = 0_i64;
        let mut best: Option<usize> = None;
        for (i, weight) in weights.iter().enumerate() {
            let weight = i64::from(*weight);
            if weight == 0 {
                continue;
            }
            self.current[i] += weight;
            total += weight;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }
}

/// The bucket, 0 to 9999, of a sticky key; the same for a key on every replica and version.
pub fn bucket(key: &[u8]) -> u32 {
    // xxh3 is fixed by its specification, unlike std's randomly keyed SipHash.
    (xxh3_64(key) % u64::from(TOTAL_WEIGHT)) as u32
}

/// The backend whose slice of the 10000 buckets holds `bucket`, or `None` when every
/// weight is 0.
pub fn cohort(bucket: u32, weights: &[u32]) -> Option<usize> {
    let mut upper = 0;
    for (i, weight) in weights.iter().enumerate() {
        upper += *weight;
        if bucket < upper {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_percent_is_exactly_every_twentieth_request() {
        let mut swrr = SmoothWeighted::default();
        let picks: Vec<usize> = (0..10_000).filter_map(|_| swrr.pick(&[9_500, 500])).collect();
        assert_eq!(picks.iter().filter(|&&b| b == 1).count(), 500);
        for window in picks.windows(20) {
            assert!(window.iter().filter(|&&b| b == 1).count() <= 1, "two canary requests within 20");
        }
    }

    #[test]
    fn any_run_is_within_one_of_the_exact_share() {
        let weights = [5_000, 3_000, 2_000];
        let mut swrr = SmoothWeighted::default();
        let picks: Vec<usize> = (0..1_000).filter_map(|_| swrr.pick(&weights)).collect();
        for n in [10, 37, 100, 1_000] {
            for (backend, weight) in weights.iter().enumerate() {
                let got = picks[..n].iter().filter(|&&b| b == backend).count() as f64;
                let exact = n as f64 * f64::from(*weight) / 10_000.0;
                assert!((got - exact).abs() <= 1.0, "backend {backend} got {got} of {n}, exact {exact}");
            }
        }
    }

    #[test]
    fn zero_weights_are_never_picked() {
        let mut swrr = SmoothWeighted::default();
        assert!((0..100).all(|_| swrr.pick(&[0, 10_000]) == Some(1)));
        assert_eq!(swrr.pick(&[0, 0]), None);
        assert_eq!(cohort(5, &[0, 0]), None);
    }

    #[test]
    fn cohorts_move_one_way_as_the_weight_rises() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let side = |stable: u32| -> Vec<usize> {
            keys.iter()
                .map(|key| cohort(bucket(key.as_bytes()), &[stable, TOTAL_WEIGHT - stable]).unwrap_or(0))
                .collect()
        };
        let at20 = side(8_000);
        let canary = at20.iter().filter(|&&b| b == 1).count();
        assert!((1_900..=2_100).contains(&canary), "{canary} of 10000 users on the canary at 20%");
        let at50 = side(5_000);
        assert!(
            at20.iter().zip(&at50).all(|(before, after)| !(*before == 1 && *after == 0)),
            "a canary user moved back"
        );
        assert!(side(TOTAL_WEIGHT).iter().all(|&b| b == 0), "at 0% everyone is on stable");
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket(b"alice"), bucket(b"alice"));
        let distinct: std::collections::HashSet<u32> = (0..1_000).map(|i| bucket(format!("u{i}").as_bytes())).collect();
        assert!(distinct.len() > 900);
    }
}
