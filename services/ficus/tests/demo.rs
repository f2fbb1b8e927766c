//! `ficus demo`, shortened: a full migration, an automatic rollback of a faulty release,
//! no lost sessions, no users moved back while the weight only rose.

use std::time::Duration;

use ficus::demo::{DemoOptions, Pace, run};
use ficus_proto::planner::v1::Phase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_keeps_its_promises() {
    let pace = Pace { users: 100, rate: 4.0, stage_window: Duration::from_secs(2), ..Pace::default() };
    let options = DemoOptions { pace, ..DemoOptions::default() };
    let summary = tokio::time::timeout(Duration::from_secs(240), run(options))
        .await
        .expect("the demo ends")
        .expect("the demo runs");
    println!("{summary}");
    assert_eq!(summary.migration, Phase::Succeeded, "the first migration reaches 100%");
    assert_eq!(summary.faulty, Phase::RolledBack, "the faulty release is rolled back");
    // Faulty from 50% on: back to 20%, judged again and still faulty, back to 5%, then 0.
    assert_eq!(summary.stepped_back, [5_000, 2_000, 500, 0], "a stage back at a time, each judged again");
    let reaction = summary.fault_to_rollback.expect("the fault was injected");
    assert!(reaction < Duration::from_secs(15), "stepped back {reaction:?} after the fault");
    assert_eq!(summary.observed.lost_sessions, 0);
    assert_eq!(summary.observed.flips, 0);
    assert!(summary.observed.new.errors > 0, "the fault was seen by users");
    assert_eq!(summary.observed.legacy.errors, 0);
    assert!(summary.observed.legacy.requests > 0 && summary.observed.new.requests > 0);
    assert!(summary.promises_kept());
}
