//! A planner never loses its place: killed with SIGKILL mid-stage it resumes at the same
//! step; a decision made while traffic is down lands after a kill; and replicas on Redis
//! share the rollouts, one driver each, taking over a dead replica's.

mod support;

use std::sync::{Arc, Mutex};

use ficus_kit::store::Store;
use ficus_proto::{
    planner::v1::{self as proto, Phase, planner_client::PlannerClient},
    service_names::PLANNER,
    traffic::v1 as traffic,
};
use ficus_testkit::{RedisServer, ServiceProcess, wait_until};
use futures::StreamExt;
use support::{FAIL, PASS, Peers, create, secs, strangler, until};

/// Records every canary weight traffic applies, in order.
fn record_weights(peers: &Peers) -> Arc<Mutex<Vec<u32>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut api = peers.traffic_api.clone();
    let record = seen.clone();
    tokio::spawn(async move {
        let Ok(events) = api.watch_routes(traffic::WatchRoutesRequest {}).await else { return };
        let mut events = events.into_inner();
        while let Some(Ok(event)) = events.next().await {
            if let Some(traffic::route_event::Event::Put(route)) = event.event
                && let Ok(mut seen) = record.lock()
            {
                seen.push(route.weights.get("k8s").copied().unwrap_or(0));
            }
        }
    });
    seen
}

fn planner_process(peers: &Peers, store: &str, name: &str) -> ServiceProcess {
    let env = [
        ("FICUS_STORE", store.to_owned()),
        ("FICUS_TRAFFIC", peers.traffic.grpc_addr.to_string()),
        ("FICUS_ANALYSIS", peers.analysis.grpc_addr.to_string()),
        ("FICUS_LEASE_TTL", "2s".to_owned()),
        ("HOSTNAME", name.to_owned()),
    ];
    ServiceProcess::spawn(env!("CARGO_BIN_EXE_ficus-planner"), &env)
}

fn client(process: &ServiceProcess) -> PlannerClient<tonic::transport::Channel> {
    PlannerClient::new(ficus_testkit::grpc::channel(process.grpc_addr))
}

#[tokio::test]
async fn a_planner_killed_mid_stage_resumes_at_the_same_step() {
    let peers = Peers::start().await;
    let weights = record_weights(&peers);
    let store = peers.data.path().join("planner").display().to_string();
    let mut first = planner_process(&peers, &store, "first");
    first.wait_serving(PLANNER, secs(30)).await;
    let mut api = client(&first);
    let spec =
        strangler(&[(20.0, secs(2)), (50.0, secs(6)), (100.0, secs(1))], &[(100.0, PASS)], support_policy(), false);
    let rollout = create(&mut api, spec).await;
    let mid =
        until(&api, &rollout.id, secs(30), |r| r.weights.get("k8s") == Some(&5_000) && r.last_verdict.is_some()).await;

    first.kill();
    first.wait_exit(secs(10)).await;
    let mut second = planner_process(&peers, &store, "second");
    second.wait_serving(PLANNER, secs(30)).await;
    let api = client(&second);
    let resumed = api
        .clone()
        .get_rollout(proto::GetRolloutRequest { id: rollout.id.clone() })
        .await
        .expect("rollout")
        .into_inner();
    assert_eq!(resumed.step, mid.step, "resumed at the step it was killed in");
    let done = until(&api, &rollout.id, secs(40), |r| r.phase() == Phase::Succeeded).await;
    assert_eq!(done.weights["k8s"], 10_000);
    ficus_testkit::eventually(secs(5), || async { peers.canary_weight().await == 10_000 }).await;
    let seen = weights.lock().expect("weights").clone();
    assert!(seen.windows(2).all(|pair| pair[0] <= pair[1]), "no stage repeated or skipped back: {seen:?}");
    assert_eq!(seen.iter().filter(|w| **w == 2_000).count(), 1, "20% applied once: {seen:?}");
    second.terminate();
    second.wait_exit(secs(20)).await;
    peers.stop().await;
}

/// What ends the rollout while traffic is unreachable.
#[derive(Clone, Copy, Debug)]
enum Decision {
    /// The 5% stage's analysis fails.
    Fail,
    /// An operator aborts.
    Abort,
}

/// A decision recorded while traffic is down, then the planner killed with SIGKILL before
/// traffic comes back: once both run again, traffic must get the decision's weights.
async fn a_decision_lands_after_an_outage_and_a_kill(decision: Decision) {
    let mut peers = Peers::start().await;
    let store = peers.data.path().join("planner").display().to_string();
    let mut first = planner_process(&peers, &store, "first");
    first.wait_serving(PLANNER, secs(30)).await;
    let mut api = client(&first);
    let verdict = match decision {
        Decision::Fail => FAIL,
        Decision::Abort => PASS,
    };
    let mut spec = strangler(&[(5.0, secs(60)), (100.0, secs(1))], &[(100.0, verdict)], support_policy(), false);
    // The first verdict comes after traffic is already down.
    if let Some(analysis) = spec.analysis.as_mut() {
        analysis.initial_delay = Some(secs(3).into());
    }
    let rollout = create(&mut api, spec).await;
    until(&api, &rollout.id, secs(30), |r| r.step == 1).await;
    ficus_testkit::eventually(secs(10), || async { peers.canary_weight().await == 500 }).await;

    peers.stop_traffic().await;
    if let Decision::Abort = decision {
        api.abort(proto::AbortRequest { id: rollout.id.clone(), reason: "bad release".into() }).await.expect("abort");
    }
    let decided =
        until(&api, &rollout.id, secs(30), |r| r.phase() == Phase::RolledBack || r.phase() == Phase::Aborted).await;
    assert_eq!(decided.weights["k8s"], 0, "{decision:?} sends every request to stable");
    assert!(decided.weights_pending, "traffic is down: the weights cannot have been applied");

    first.kill();
    first.wait_exit(secs(10)).await;

    peers.restart_traffic().await;
    assert_eq!(peers.canary_weight().await, 500, "the decision never reached traffic before the kill");
    let mut second = planner_process(&peers, &store, "second");
    second.wait_serving(PLANNER, secs(30)).await;
    ficus_testkit::eventually(secs(10), || async { peers.canary_weight().await == 0 }).await;
    let api = client(&second);
    let applied = until(&api, &rollout.id, secs(10), |r| !r.weights_pending).await;
    assert_eq!(
        applied.applied_generation,
        route(&peers).await.generation,
        "the rollout names the generation that carries it"
    );
    assert_eq!(applied.phase(), decided.phase(), "applying changes no decision");
    second.terminate();
    second.wait_exit(secs(20)).await;
    peers.stop().await;
}

#[tokio::test]
async fn a_rollback_recorded_while_traffic_is_down_lands_after_a_kill() {
    a_decision_lands_after_an_outage_and_a_kill(Decision::Fail).await;
}

#[tokio::test]
async fn an_abort_recorded_while_traffic_is_down_lands_after_a_kill() {
    a_decision_lands_after_an_outage_and_a_kill(Decision::Abort).await;
}

async fn route(peers: &Peers) -> traffic::Route {
    route_named(peers, "checkout").await
}

async fn route_named(peers: &Peers, name: &str) -> traffic::Route {
    let request = traffic::GetRouteRequest { name: name.to_owned() };
    peers.traffic_api.clone().get_route(request).await.expect("route").into_inner()
}

fn support_policy() -> proto::FailurePolicy {
    proto::FailurePolicy::RollbackToPreviousStage
}

async fn lease_holder(store: &Store, id: &str) -> Option<String> {
    ficus_planner::lease::Leases::holder(store, id).await.ok().flatten()
}

/// The canary's weight on traffic's route `name`.
async fn canary_on(peers: &Peers, name: &str) -> Option<u32> {
    let request = traffic::GetRouteRequest { name: name.to_owned() };
    let route = peers.traffic_api.clone().get_route(request).await.ok()?.into_inner();
    Some(route.weights.get("k8s").copied().unwrap_or(0))
}

/// Which replica holds each of `ids`, once every one is held and its canary is at
/// `weight` on traffic (route `checkout-{i}` for `ids[i]`), and none by `dead`.
async fn holders(peers: &Peers, store: &Store, ids: &[String], weight: u32, dead: Option<&str>) -> Vec<String> {
    wait_until(secs(60), || async {
        let mut holders = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let holder =
                lease_holder(store, id).await.filter(|holder| dead.is_none_or(|dead| !holder.starts_with(dead)))?;
            (canary_on(peers, &format!("checkout-{i}")).await? == weight).then_some(())?;
            holders.push(holder);
        }
        Some(holders)
    })
    .await
}

#[tokio::test]
async fn three_replicas_on_redis_share_thirty_rollouts_and_take_over_a_dead_ones() {
    let redis = RedisServer::new();
    let peers = Peers::start().await;
    let names = ["replica-a", "replica-b", "replica-c"];
    let mut replicas: Vec<ServiceProcess> =
        names.iter().map(|name| planner_process(&peers, &redis.url(), name)).collect();
    for replica in &mut replicas {
        replica.wait_serving(PLANNER, secs(30)).await;
    }
    let store = Store::open(&redis.url(), "planner").await.expect("store");
    let mut api = client(&replicas[0]);
    let mut ids = Vec::new();
    for i in 0..30 {
        let name = format!("checkout-{i}");
        let mut route = ficus_testkit::route::two_backends(&name, ("legacy", "127.0.0.1:1"), ("k8s", "127.0.0.1:2"), 0);
        route.r#match = Some(traffic::RouteMatch { hosts: Vec::new(), path_prefix: format!("/{name}") });
        let request = traffic::PutRouteRequest { route: Some(route), expected_generation: 0 };
        peers.traffic_api.clone().put_route(request).await.expect("route");
        let mut spec = strangler(&[(20.0, secs(600)), (100.0, secs(1))], &[(100.0, PASS)], support_policy(), false);
        spec.route = name;
        ids.push(create(&mut api, spec).await.id);
    }

    // Every rollout driven by one replica, the thirty spread over all three.
    let before = holders(&peers, &store, &ids, 2_000, None).await;
    for name in names {
        let share = before.iter().filter(|holder| holder.starts_with(name)).count();
        assert!((5..=10).contains(&share), "{name} drives {share} of 30: {before:?}");
    }

    // One replica dies: the others claim its rollouts once its leases expire (2 s).
    let victim = 0;
    let orphan = before.iter().position(|holder| holder.starts_with(names[victim])).expect("the victim drove some");
    let orphan_route = format!("checkout-{orphan}");
    let old_token = route_named(&peers, &orphan_route).await.fencing_token;
    assert!(old_token > 0, "the driver's weights carry its fencing token");
    replicas[victim].kill();
    replicas[victim].wait_exit(secs(10)).await;
    let killed = std::time::Instant::now();
    let after = holders(&peers, &store, &ids, 2_000, Some(names[victim])).await;
    let took = killed.elapsed();
    println!("the dead replica's rollouts were claimed again {took:?} after the kill");
    assert!(took < secs(10), "taken over {took:?} after the kill, with a 2 s lease");
    let kept = before.iter().zip(&after).filter(|(was, is)| !was.starts_with(names[victim]) && was != is).count();
    assert_eq!(kept, 0, "the survivors kept their own rollouts: {before:?} then {after:?}");

    // The survivors carry every rollout on: promoted past the long stage, all finish.
    let mut api = client(&replicas[1]);
    for id in &ids {
        api.promote(proto::PromoteRequest { id: id.clone(), full: false, reason: String::new() })
            .await
            .expect("promote");
    }
    for (i, id) in ids.iter().enumerate() {
        let done = until(&api, id, secs(60), |r| r.phase() == Phase::Succeeded && !r.weights_pending).await;
        assert_eq!(canary_on(&peers, &format!("checkout-{i}")).await, Some(10_000), "{}", done.message);
    }
    assert!(route_named(&peers, &orphan_route).await.fencing_token > old_token, "the new driver's token is newer");

    // The dead driver, had it only been paused, would send its weights late: refused.
    let late = traffic::SetWeightsRequest {
        route: orphan_route.clone(),
        weights: [("legacy".to_owned(), 5_000), ("k8s".to_owned(), 5_000)].into(),
        expected_generation: 0,
        fencing_token: old_token,
    };
    let refused = peers.traffic_api.clone().set_weights(late).await.expect_err("a superseded driver's weights");
    assert_eq!(refused.code(), tonic::Code::Aborted);
    assert_eq!(canary_on(&peers, &orphan_route).await, Some(10_000), "the refused write changed nothing");
    for replica in &mut replicas[1..] {
        replica.terminate();
        replica.wait_exit(secs(20)).await;
    }
    peers.stop().await;
}

/// Whether a rollout has ended and traffic confirmed its final weights.
fn settled(rollout: &proto::Rollout) -> bool {
    ficus_planner::machine::is_terminal(rollout.phase()) && !rollout.weights_pending
}

/// Starts a planner on `store`, creates `spec`, then kills the planner with SIGKILL
/// `kills` times, each at a random instant 0.1 to 0.8 s after the last one served, and
/// starts it again; returns the rollout's id and the planner left running. The seed is
/// printed so a failing schedule can be replayed.
async fn under_random_kills(
    peers: &Peers,
    store: &str,
    spec: proto::RolloutSpec,
    kills: usize,
) -> (String, ServiceProcess) {
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::random();
    println!("kill schedule seed: {seed}");
    let mut schedule = rand::rngs::StdRng::seed_from_u64(seed);
    let mut planner = planner_process(peers, store, "chaos-0");
    planner.wait_serving(PLANNER, secs(30)).await;
    let id = create(&mut client(&planner), spec).await.id;
    for kill in 1..=kills {
        tokio::time::sleep(std::time::Duration::from_millis(schedule.random_range(100..800))).await;
        planner.kill();
        planner.wait_exit(secs(10)).await;
        planner = planner_process(peers, store, &format!("chaos-{kill}"));
        planner.wait_serving(PLANNER, secs(30)).await;
    }
    (id, planner)
}

#[tokio::test]
async fn fifty_kills_during_an_eleven_stage_rollout_skip_no_stage_and_it_succeeds() {
    let peers = Peers::start().await;
    let weights = record_weights(&peers);
    let store = peers.data.path().join("planner").display().to_string();
    let stages: Vec<(f64, std::time::Duration)> =
        [1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 100.0].iter().map(|&w| (w, secs(4))).collect();
    let spec = strangler(&stages, &[(100.0, PASS)], support_policy(), false);
    let (id, mut planner) = under_random_kills(&peers, &store, spec, 50).await;
    let done = until(&client(&planner), &id, secs(120), settled).await;
    assert_eq!(done.phase(), Phase::Succeeded, "{}", done.message);
    ficus_testkit::eventually(secs(10), || async { peers.canary_weight().await == 10_000 }).await;
    let seen = weights.lock().expect("weights").clone();
    assert!(seen.windows(2).all(|pair| pair[0] <= pair[1]), "weights only rise: {seen:?}");
    for (weight, _) in &stages {
        let bp = (weight * 100.0).round() as u32;
        assert!(seen.contains(&bp), "stage {weight}% applied: {seen:?}");
    }
    planner.terminate();
    planner.wait_exit(secs(20)).await;
    peers.stop().await;
}

#[tokio::test]
async fn twenty_kills_during_a_failing_rollout_still_end_with_the_canary_at_zero() {
    let peers = Peers::start().await;
    let weights = record_weights(&peers);
    let store = peers.data.path().join("planner").display().to_string();
    let stages = [(5.0, secs(4)), (20.0, secs(4)), (50.0, secs(4)), (100.0, secs(4))];
    let spec = strangler(&stages, &[(20.0, PASS), (100.0, FAIL)], proto::FailurePolicy::AbortToZero, false);
    let (id, mut planner) = under_random_kills(&peers, &store, spec, 20).await;
    let done = until(&client(&planner), &id, secs(120), settled).await;
    assert_eq!(done.phase(), Phase::RolledBack, "{}", done.message);
    ficus_testkit::eventually(secs(10), || async { peers.canary_weight().await == 0 }).await;
    let seen = weights.lock().expect("weights").clone();
    assert!(seen.iter().all(|weight| *weight <= 5_000), "never past the failing stage: {seen:?}");
    planner.terminate();
    planner.wait_exit(secs(20)).await;
    peers.stop().await;
}
