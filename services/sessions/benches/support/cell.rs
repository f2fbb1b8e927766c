//! One cell of a benchmark table: the calls a setup answered in its turns, the errors,
//! the time taken and the latency of each call.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Longest a cell runs after its warm-up, over all its rounds.
pub const CELL_TIME: Duration = Duration::from_secs(3);
/// Each cell runs in this many rounds, the paths taking turns, so that a slower stretch
/// of the machine (a neighbour's load on a shared host) weighs on every path alike
/// instead of on whichever ran during it.
pub const ROUNDS: u32 = 3;
/// Unmeasured run before each cell, so connections and caches are warm.
pub const WARM_UP: Duration = Duration::from_millis(300);

/// Calls, errors, time and latencies of one cell.
pub struct Cell {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Cell {
    pub fn empty() -> Self {
        Self { ops: 0, errors: 0, elapsed: Duration::ZERO, latency: histogram() }
    }

    /// Counts one call that took `took`.
    pub fn record(&mut self, took: Duration, ok: bool) {
        self.latency.saturating_record(took.as_micros().try_into().unwrap_or(u64::MAX));
        if ok {
            self.ops += 1;
        } else {
            self.errors += 1;
        }
    }

    /// Takes in another stretch of the same cell.
    pub fn add(&mut self, other: Cell) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        let _ = self.latency.add(other.latency);
    }

    /// The cell of the clients `tasks`, which ran from `started` until now.
    pub async fn gather(tasks: Vec<tokio::task::JoinHandle<Cell>>, started: std::time::Instant) -> Cell {
        let mut cell = Cell::empty();
        for task in tasks {
            if let Ok(done) = task.await {
                cell.add(done);
            }
        }
        cell.elapsed = started.elapsed();
        cell
    }

    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at three significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|error| panic!("histogram bounds: {error}"))
}
