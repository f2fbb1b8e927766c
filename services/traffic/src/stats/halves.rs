//! A backend's statistics as two series, one per [`Half`] of its requests, so that the
//! backend can be compared with itself: how far apart two halves of the same traffic read
//! is the noise a comparison with another backend has to beat.
//!
//! Every read but [`Halves::half_summary_at`] adds the halves up, so to everyone else a
//! backend is one series. Splitting costs a request nothing (it locks the one half it
//! lands in) and roughly doubles a series' memory (see the `stats` module docs).

use std::time::Instant;

use super::{
    Half,
    export::Totals,
    series::{Period, Series, Summary, merge_periods},
};

/// The two halves of one route and backend's statistics.
#[derive(Debug)]
pub(super) struct Halves {
    halves: [Series; 2],
}

impl Halves {
    /// Empty halves whose seconds count from `origin`, keeping `retention_secs` seconds.
    pub(super) fn new(origin: Instant, retention_secs: u64) -> Self {
        Self { halves: [Series::new(origin, retention_secs), Series::new(origin, retention_secs)] }
    }

    /// The series of `half`.
    pub(super) fn series(&self, half: Half) -> &Series {
        match half {
            Half::First => &self.halves[0],
            Half::Second => &self.halves[1],
        }
    }

    /// Counts one request of `outcome` (an outcome slot) that took `micros` in `half`.
    pub(super) fn record_at(&self, now: Instant, half: Half, outcome: usize, micros: u64) {
        self.series(half).record_at(now, outcome, micros);
    }

    /// One half's counts and latencies over the `window_secs` most recent seconds.
    pub(super) fn half_summary_at(&self, half: Half, now: Instant, window_secs: u64) -> Summary {
        self.series(half).summary_at(now, window_secs)
    }

    /// Both halves' periods of the window added up (see [`Series::periods_at`]).
    pub(super) fn periods_at(&self, now: Instant, window_secs: u64, period_secs: u64) -> Vec<Period> {
        let [first, second] = &self.halves;
        merge_periods(first.periods_at(now, window_secs, period_secs), second.periods_at(now, window_secs, period_secs))
    }

    /// Drops closed seconds that fell out of retention by `now`, in both halves.
    pub(super) fn expire_at(&self, now: Instant) {
        for half in &self.halves {
            half.expire_at(now);
        }
    }

    /// Totals of both halves since the series started.
    pub(super) fn totals(&self) -> Totals {
        let [first, second] = &self.halves;
        let mut totals = first.totals();
        totals.merge(&second.totals());
        totals
    }
}
