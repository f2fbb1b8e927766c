//! Windows and deadlines on tokio's paused time: the planner runs on a paused runtime and
//! times rollouts by a clock that follows it, so rollouts of hours run in seconds of real
//! time and their histories still show each decision at the time its window or deadline
//! set. (Store TTLs, such as leases', are kept by the store in real time.) Traffic and analysis keep real time on a runtime of their own.

mod support;

use std::time::{Duration, SystemTime};

use ficus_kit::clock::Clock;
use ficus_proto::{
    planner::v1::{self as proto, Phase, planner_client::PlannerClient},
    time,
};
use futures::StreamExt;
use support::{INCONCLUSIVE, Peers, strangler};

const HOUR: Duration = Duration::from_secs(3600);

/// How far a decision may land from its time: the paused clock jumps timer by timer
/// (lease renewals every few seconds) while a call to traffic is in flight.
const SLACK: Duration = Duration::from_secs(60);

/// Runs `specs` (created one after the other on one planner) on a paused runtime against
/// `peers` and returns each rollout once ended or paused; panics after two minutes of
/// real time.
fn on_paused_time(peers: &Peers, specs: Vec<proto::RolloutSpec>) -> Vec<proto::Rollout> {
    let store = peers.data.path().join("planner").display().to_string();
    let mut config = ficus_planner::Config::ephemeral(
        store,
        peers.traffic.grpc_addr.to_string(),
        peers.analysis.grpc_addr.to_string(),
    );
    // Paused time jumps past any timeout while a call waits on a socket: none that matter.
    config.peer_timeout = Duration::from_secs(300 * 24 * 3600);
    // Each renewal of a lease is a timer the paused clock stops at; few of them keep the
    // hours short in real time. The store keeps the lease by real time.
    config.lease_ttl = Duration::from_secs(600);
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("paused runtime");
        let rollouts = runtime.block_on(async move {
            let shutdown = tokio_util::sync::CancellationToken::new();
            let planner = ficus_planner::start_with_clock(config, Clock::following_tokio(), shutdown.clone())
                .await
                .expect("planner starts");
            // No timeouts: paused time would reach them while a call waits on its socket.
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{}", planner.grpc_addr)).expect("endpoint");
            let mut api = PlannerClient::new(endpoint.connect_lazy());
            let mut ended = Vec::new();
            for spec in specs {
                let request = proto::CreateRolloutRequest { spec: Some(spec), id: String::new() };
                let id = api.create_rollout(request).await.expect("created").into_inner().id;
                let watch = proto::WatchRolloutRequest { id: id.clone() };
                let mut events = api.watch_rollout(watch).await.expect("watch").into_inner();
                // Driven by the rollout's own events: no timer of the test's in the way.
                loop {
                    let event = events.next().await.expect("the watch follows the rollout to its end");
                    let rollout = event.expect("a rollout event").rollout.expect("rollout");
                    let held = rollout.phase() == Phase::Paused;
                    if (held || ficus_planner::machine::is_terminal(rollout.phase())) && !rollout.weights_pending {
                        if held {
                            // Frees the route for the next spec, once traffic has the abort.
                            let abort = proto::AbortRequest { id: id.clone(), reason: String::new() };
                            api.abort(abort).await.expect("abort");
                            while let Some(Ok(_)) = events.next().await {}
                        }
                        ended.push(rollout);
                        break;
                    }
                }
            }
            shutdown.cancel();
            ended
        });
        let _ = done.send(rollouts);
    });
    outcome.recv_timeout(Duration::from_secs(120)).expect("the rollouts end within two minutes of real time")
}

fn at(entry: &proto::RolloutTransition) -> SystemTime {
    entry.at.as_ref().and_then(time::system_time).expect("a time")
}

fn near(actual: Duration, expected: Duration) -> bool {
    actual >= expected && actual <= expected + SLACK
}

#[test]
fn a_three_hour_rollout_runs_in_seconds_each_step_at_its_time() {
    let real = tokio::runtime::Runtime::new().expect("runtime");
    let peers = real.block_on(Peers::start());
    let mut spec = strangler(&[(5.0, HOUR), (50.0, HOUR), (100.0, HOUR)], &[], Default::default(), false);
    spec.analysis = None;
    let started = std::time::Instant::now();
    let ended = on_paused_time(&peers, vec![spec]).remove(0);
    println!("three hours of windows took {:?} of real time", started.elapsed());
    assert_eq!(ended.phase(), Phase::Succeeded, "{}", ended.message);
    let canary: Vec<u32> = ended.history.iter().map(|entry| entry.weights["k8s"]).collect();
    assert_eq!(canary, [500, 500, 5_000, 5_000, 10_000, 10_000, 10_000], "set, observe, ... then done");
    let first = at(&ended.history[0]);
    for (step, entry) in ended.history.iter().enumerate().skip(1) {
        // Every second step starts a window; the one after it ends it an hour later.
        let windows = u32::try_from(step / 2).expect("few steps");
        let since = at(entry).duration_since(first).expect("in order");
        assert!(near(since, HOUR * windows), "step {step} at +{since:?}: {:?}", ended.history);
    }
    real.block_on(peers.stop());
}

#[test]
fn deadlines_fire_at_their_time_on_paused_time() {
    let real = tokio::runtime::Runtime::new().expect("runtime");
    let peers = real.block_on(Peers::start());
    let policy = proto::FailurePolicy::RollbackToPreviousStage;
    let mut quiet = strangler(&[(20.0, 3 * HOUR), (100.0, HOUR)], &[(100.0, INCONCLUSIVE)], policy, false);
    quiet.inconclusive_deadline = Some(HOUR.into());
    let mut late = strangler(&[(20.0, HOUR), (100.0, HOUR)], &[(100.0, INCONCLUSIVE)], policy, false);
    late.progress_deadline = Some(HOUR.into());
    late.deadline_action = proto::DeadlineAction::Abort.into();
    // The rollout's deadline is 10 h, but the 20% stage has one of its own: 1 h.
    let mut own = strangler(&[(20.0, HOUR), (100.0, HOUR)], &[(100.0, INCONCLUSIVE)], policy, false);
    own.progress_deadline = Some((10 * HOUR).into());
    own.deadline_action = proto::DeadlineAction::Abort.into();
    if let Some(proto::rollout_spec::Strategy::Strangler(strangler)) = own.strategy.as_mut() {
        strangler.stages[0].progress_deadline = Some(HOUR.into());
    }
    let ended = on_paused_time(&peers, vec![quiet, late, own]);

    let (quiet, late, own) = (&ended[0], &ended[1], &ended[2]);
    assert_eq!(own.phase(), Phase::Aborted, "{}", own.message);
    let aborted = at(own.history.last().expect("the abort")).duration_since(at(&own.history[1])).expect("later");
    assert!(near(aborted, 2 * HOUR), "the stage's own deadline, not the rollout's: {:?}", own.history);
    assert_eq!((quiet.phase(), quiet.weights["k8s"]), (Phase::Paused, 2_000), "{}", quiet.message);
    assert!(quiet.message.contains("inconclusive deadline"), "{}", quiet.message);
    let entered = at(&quiet.history[1]);
    let paused = at(quiet.history.last().expect("the pause"));
    assert!(near(paused.duration_since(entered).expect("later"), HOUR), "{:?}", quiet.history);

    assert_eq!((late.phase(), late.weights["k8s"]), (Phase::Aborted, 0), "{}", late.message);
    assert!(late.message.contains("progress deadline"), "{}", late.message);
    let entered = at(&late.history[1]);
    let aborted = at(late.history.last().expect("the abort"));
    assert!(
        near(aborted.duration_since(entered).expect("later"), 2 * HOUR),
        "window 1 h + deadline 1 h: {:?}",
        late.history
    );
    real.block_on(peers.stop());
}
