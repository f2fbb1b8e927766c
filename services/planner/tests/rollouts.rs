//! The state machine driving real traffic and analysis services, with verdicts forced
//! PASS, FAIL or INCONCLUSIVE through fixed metric values.

mod support;

use std::time::Duration;

use ficus_kit::status::invalid_field;
use ficus_proto::{planner::v1 as proto, planner::v1::Phase, time};
use futures::StreamExt;
use support::{FAIL, INCONCLUSIVE, PASS, Peers, create, secs, strangler, until};
use tonic::Code;

const POLICY_ROLLBACK: proto::FailurePolicy = proto::FailurePolicy::RollbackToPreviousStage;

#[tokio::test]
async fn passing_stages_promote_to_one_hundred_percent() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let spec =
        strangler(&[(20.0, secs(2)), (50.0, secs(2)), (100.0, secs(1))], &[(100.0, PASS)], POLICY_ROLLBACK, false);
    let rollout = create(&mut api, spec).await;
    let mut events =
        api.watch_rollout(proto::WatchRolloutRequest { id: rollout.id.clone() }).await.expect("watch").into_inner();
    let mut weights = Vec::new();
    let mut last = None;
    while let Some(event) = tokio::time::timeout(secs(30), events.next()).await.expect("events keep coming") {
        let event = event.expect("event");
        let rollout = event.rollout.expect("rollout");
        weights.push(rollout.weights.get("k8s").copied().unwrap_or(0));
        last = Some(rollout);
    }
    let last = last.expect("events");
    assert_eq!(last.phase(), Phase::Succeeded, "{}", last.message);
    assert!(weights.windows(2).all(|pair| pair[0] <= pair[1]), "weights only rise: {weights:?}");
    for stage in [2_000, 5_000, 10_000] {
        assert!(weights.contains(&stage), "stage {stage} seen in {weights:?}");
    }
    ficus_testkit::eventually(secs(5), || async { peers.canary_weight().await == 10_000 }).await;
    let status = api
        .promote(proto::PromoteRequest { id: last.id.clone(), ..Default::default() })
        .await
        .expect_err("promote a finished rollout");
    assert_eq!(status.code(), Code::FailedPrecondition);
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn a_failing_stage_steps_back_within_a_second_and_holds_where_it_passes_again() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let spec = strangler(
        &[(20.0, secs(2)), (50.0, secs(30)), (100.0, secs(1))],
        &[(20.0, PASS), (100.0, FAIL)],
        POLICY_ROLLBACK,
        false,
    );
    let rollout = create(&mut api, spec).await;
    let back = until(&api, &rollout.id, secs(30), |r| r.stepped_back_from == 5_000).await;
    assert_eq!((back.phase(), back.weights["k8s"]), (Phase::Progressing, 2_000), "back at 20%, judged again");
    ficus_testkit::eventually(secs(5), || async { peers.canary_weight().await == 2_000 }).await;
    let failure = back.history.last().expect("the step back is in the history");
    let verdict = failure.verdict.as_ref().expect("with the failing verdict");
    assert_eq!(verdict.outcome(), ficus_proto::analysis::v1::Outcome::Fail);
    let route = peers
        .traffic_api
        .clone()
        .get_route(ficus_proto::traffic::v1::GetRouteRequest { name: "checkout".into() })
        .await
        .expect("route")
        .into_inner();
    let judged = verdict.judged_at.as_ref().and_then(time::system_time).expect("judged at");
    let applied = route.updated_at.as_ref().and_then(time::system_time).expect("updated at");
    let reaction = applied.duration_since(judged).unwrap_or_default();
    assert!(reaction < Duration::from_secs(1), "from FAIL to stepped-back weights took {reaction:?}");
    println!("rollback reaction: {reaction:?}");

    // 20% passes its whole window again: held there for an operator, not promoted to 50%.
    let held = until(&api, &rollout.id, secs(30), |r| r.phase() == Phase::Paused).await;
    assert_eq!(held.weights["k8s"], 2_000);
    assert!(held.message.contains("50%") && held.message.contains("resume"), "{}", held.message);
    assert!(!held.weights_pending, "traffic confirmed the weights");
    let aborted = api
        .abort(proto::AbortRequest { id: rollout.id.clone(), reason: "looking into it".into() })
        .await
        .expect("abort")
        .into_inner();
    assert_eq!(aborted.phase(), Phase::Aborted);
    ficus_testkit::eventually(secs(10), || async { peers.canary_weight().await == 0 }).await;

    // The route is free again for the next attempt.
    let again = strangler(&[(20.0, secs(60))], &[(100.0, PASS)], POLICY_ROLLBACK, false);
    create(&mut api, again).await;
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn a_stage_still_failing_after_a_step_back_steps_back_again_down_to_zero() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    // Failing everywhere; 20% is promoted by hand before its first verdict, so that 50%
    // fails first and 20% is judged only after the step back.
    let mut spec =
        strangler(&[(20.0, secs(30)), (50.0, secs(30)), (100.0, secs(1))], &[(100.0, FAIL)], POLICY_ROLLBACK, false);
    if let Some(analysis) = spec.analysis.as_mut() {
        analysis.initial_delay = Some(secs(3).into());
    }
    let rollout = create(&mut api, spec).await;
    // Step 1 observes 20% (step 0 sets it).
    let at_twenty = until(&api, &rollout.id, secs(30), |r| r.step == 1).await;
    api.promote(proto::PromoteRequest { id: rollout.id.clone(), full: false, reason: String::new() })
        .await
        .expect("promote");
    let ended = until(&api, &rollout.id, secs(60), |r| r.phase() == Phase::RolledBack).await;
    assert!(at_twenty.last_verdict.is_none(), "20% was promoted before it was judged");
    assert_eq!(ended.weights["k8s"], 0);
    ficus_testkit::eventually(secs(10), || async { peers.canary_weight().await == 0 }).await;
    let failed: Vec<u32> = ended
        .history
        .iter()
        .filter(|entry| entry.verdict.as_ref().is_some_and(|v| v.outcome() == ficus_proto::analysis::v1::Outcome::Fail))
        .map(|entry| entry.weights["k8s"])
        .collect();
    assert_eq!(failed, [2_000, 0], "50% failed and went back to 20%, which failed and went back to 0");
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn an_inconclusive_deadline_takes_each_configured_action() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let cases = [
        (proto::DeadlineAction::Pause, Phase::Paused, 2_000),
        (proto::DeadlineAction::Abort, Phase::Aborted, 0),
        (proto::DeadlineAction::RollBack, Phase::RolledBack, 0),
    ];
    for (action, phase, weight) in cases {
        let mut spec =
            strangler(&[(20.0, secs(60)), (100.0, secs(1))], &[(100.0, INCONCLUSIVE)], POLICY_ROLLBACK, false);
        spec.inconclusive_deadline = Some(secs(3).into());
        spec.deadline_action = action.into();
        let rollout = create(&mut api, spec).await;
        let acted = until(&api, &rollout.id, secs(30), |r| r.phase() == phase).await;
        assert_eq!(acted.weights["k8s"], weight, "{action:?}");
        assert!(acted.message.contains("inconclusive deadline"), "{action:?}: {}", acted.message);
        ficus_testkit::eventually(secs(10), || async { peers.canary_weight().await == weight }).await;
        if phase == Phase::Paused {
            api.abort(proto::AbortRequest { id: rollout.id.clone(), reason: String::new() }).await.expect("abort");
            ficus_testkit::eventually(secs(10), || async { peers.canary_weight().await == 0 }).await;
        }
    }
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn a_step_past_its_progress_deadline_is_acted_on() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    // Conclusive but never passing in time: INCONCLUSIVE is what keeps a window from passing,
    // so the progress deadline (window + 2 s) fires, not the inconclusive one (unset).
    let mut spec = strangler(&[(20.0, secs(1)), (100.0, secs(1))], &[(100.0, INCONCLUSIVE)], POLICY_ROLLBACK, false);
    spec.progress_deadline = Some(secs(2).into());
    spec.deadline_action = proto::DeadlineAction::Abort.into();
    let rollout = create(&mut api, spec).await;
    let acted = until(&api, &rollout.id, secs(30), |r| r.phase() == Phase::Aborted).await;
    assert!(acted.message.contains("progress deadline"), "{}", acted.message);
    ficus_testkit::eventually(secs(10), || async { peers.canary_weight().await == 0 }).await;
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn abort_to_zero_and_operator_abort_send_everyone_to_stable() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let spec =
        strangler(&[(20.0, secs(30)), (100.0, secs(1))], &[(100.0, FAIL)], proto::FailurePolicy::AbortToZero, false);
    let rollout = create(&mut api, spec).await;
    let ended = until(&api, &rollout.id, secs(30), |r| r.phase() == Phase::RolledBack).await;
    assert_eq!(ended.weights["k8s"], 0);
    ficus_testkit::eventually(secs(5), || async { peers.canary_weight().await == 0 }).await;

    let spec = strangler(&[(20.0, secs(60)), (100.0, secs(1))], &[(100.0, PASS)], POLICY_ROLLBACK, false);
    let rollout = create(&mut api, spec).await;
    until(&api, &rollout.id, secs(30), |r| r.weights.get("k8s") == Some(&2_000)).await;
    ficus_testkit::eventually(secs(10), || async { peers.canary_weight().await == 2_000 }).await;
    let aborted = api
        .abort(proto::AbortRequest { id: rollout.id.clone(), reason: "drill".into() })
        .await
        .expect("abort")
        .into_inner();
    assert_eq!(aborted.phase(), Phase::Aborted);
    ficus_testkit::eventually(secs(10), || async { peers.canary_weight().await == 0 }).await;
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn pause_holds_the_weights_and_resume_carries_on() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let spec = strangler(&[(20.0, secs(2)), (100.0, secs(1))], &[(100.0, PASS)], POLICY_ROLLBACK, false);
    let rollout = create(&mut api, spec).await;
    let paused = api
        .pause(proto::PauseRequest { id: rollout.id.clone(), reason: "investigating".into() })
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(paused.phase(), Phase::Paused);
    let status = api
        .resume(proto::ResumeRequest { id: "checkout-nope".into(), reason: String::new() })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    // Well past the stage's window: a paused rollout does not move.
    tokio::time::sleep(secs(4)).await;
    let still = api.get_rollout(proto::GetRolloutRequest { id: rollout.id.clone() }).await.expect("get").into_inner();
    assert_eq!((still.phase(), still.step), (Phase::Paused, paused.step));
    assert!(peers.canary_weight().await <= 2_000);
    api.resume(proto::ResumeRequest { id: rollout.id.clone(), reason: String::new() }).await.expect("resume");
    let done = until(&api, &rollout.id, secs(30), |r| r.phase() == Phase::Succeeded).await;
    assert_eq!(done.weights["k8s"], 10_000);
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn a_manual_gate_waits_for_promote() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let spec = strangler(&[(50.0, secs(1)), (100.0, secs(1))], &[(100.0, PASS)], POLICY_ROLLBACK, true);
    let rollout = create(&mut api, spec).await;
    let gated = until(&api, &rollout.id, secs(30), |r| r.phase() == Phase::Paused).await;
    assert_eq!(gated.weights["k8s"], 5_000);
    let status = api
        .resume(proto::ResumeRequest { id: rollout.id.clone(), reason: String::new() })
        .await
        .expect_err("resume at a gate");
    assert_eq!(status.code(), Code::FailedPrecondition);
    api.promote(proto::PromoteRequest { id: rollout.id.clone(), full: false, reason: "dashboards look fine".into() })
        .await
        .expect("promote");
    until(&api, &rollout.id, secs(30), |r| r.phase() == Phase::Succeeded).await;
    ficus_testkit::eventually(secs(5), || async { peers.canary_weight().await == 10_000 }).await;
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn an_inconclusive_stage_never_promotes() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let spec = strangler(&[(20.0, secs(1)), (100.0, secs(1))], &[(100.0, INCONCLUSIVE)], POLICY_ROLLBACK, false);
    let rollout = create(&mut api, spec).await;
    let waiting = until(&api, &rollout.id, secs(30), |r| r.message.contains("waiting for a passing verdict")).await;
    tokio::time::sleep(secs(3)).await;
    let still = api.get_rollout(proto::GetRolloutRequest { id: rollout.id.clone() }).await.expect("get").into_inner();
    assert_eq!((still.phase(), still.step), (Phase::Progressing, waiting.step));
    assert_eq!(peers.canary_weight().await, 2_000, "held at 20% without a verdict");
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn bad_specs_and_a_second_rollout_on_a_route_are_refused() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let mut unknown_route = strangler(&[(20.0, secs(60))], &[], POLICY_ROLLBACK, false);
    unknown_route.route = "nope".into();
    let mut unknown_backend = strangler(&[(20.0, secs(60))], &[], POLICY_ROLLBACK, false);
    unknown_backend.canary_backend = "elsewhere".into();
    let mut unknown_baseline = strangler(&[(20.0, secs(60))], &[], POLICY_ROLLBACK, false);
    unknown_baseline.baseline_backend = "legacy-copy".into();
    let falling = strangler(&[(50.0, secs(60)), (20.0, secs(60))], &[], POLICY_ROLLBACK, false);
    for (spec, field) in [
        (unknown_route, "spec.route"),
        (unknown_backend, "spec.canary_backend"),
        (unknown_baseline, "spec.baseline_backend"),
        (falling, "spec.strangler.stages[1].weight"),
    ] {
        let status = api
            .create_rollout(proto::CreateRolloutRequest { spec: Some(spec.clone()), id: String::new() })
            .await
            .expect_err("bad spec accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(invalid_field(&status).as_deref(), Some(field), "{status:?}");
        let status =
            api.preview_plan(proto::PreviewPlanRequest { spec: Some(spec) }).await.expect_err("bad spec previewed");
        assert_eq!(invalid_field(&status).as_deref(), Some(field));
    }
    assert!(
        api.list_rollouts(proto::ListRolloutsRequest::default()).await.expect("list").into_inner().rollouts.is_empty()
    );

    let first = create(&mut api, strangler(&[(20.0, secs(60))], &[(100.0, PASS)], POLICY_ROLLBACK, false)).await;
    let status = api
        .create_rollout(proto::CreateRolloutRequest {
            spec: Some(strangler(&[(50.0, secs(60))], &[], POLICY_ROLLBACK, false)),
            id: String::new(),
        })
        .await
        .expect_err("second active rollout");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&first.id), "{}", status.message());
    let listed = api
        .list_rollouts(proto::ListRolloutsRequest { route: "checkout".into(), active_only: true })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.rollouts.len(), 1);
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn a_preview_shows_every_step_and_the_minimum_duration() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let spec =
        strangler(&[(5.0, secs(60)), (20.0, secs(60)), (100.0, secs(120))], &[(100.0, PASS)], POLICY_ROLLBACK, true);
    let plan = api
        .preview_plan(proto::PreviewPlanRequest { spec: Some(spec) })
        .await
        .expect("preview")
        .into_inner()
        .plan
        .expect("plan");
    assert_eq!(plan.minimum_duration, Some(secs(240).into()));
    assert!(plan.steps.iter().any(|step| step.gate), "the manual gate is shown");
    assert_eq!(plan.steps.last().map(|step| step.canary_weight), Some(100.0));
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn without_analysis_the_rollout_holds_its_weights_and_says_why() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let spec = strangler(&[(20.0, secs(3)), (100.0, secs(1))], &[(100.0, PASS)], POLICY_ROLLBACK, false);
    let rollout = create(&mut api, spec).await;
    until(&api, &rollout.id, secs(30), |r| r.weights.get("k8s") == Some(&2_000) && r.last_verdict.is_some()).await;
    peers.analysis_shutdown.cancel();
    let held = until(&api, &rollout.id, secs(30), |r| r.message.contains("analysis unavailable")).await;
    assert_eq!(held.phase(), Phase::Progressing);
    // Well past the stage's window: no promotion without a verdict.
    tokio::time::sleep(secs(4)).await;
    let still = api.get_rollout(proto::GetRolloutRequest { id: rollout.id.clone() }).await.expect("get").into_inner();
    assert_eq!((still.step, still.weights["k8s"]), (held.step, 2_000));
    assert_eq!(peers.canary_weight().await, 2_000);
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn metrics_show_each_rollouts_phase_weight_verdicts_and_rollback_time() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let passing =
        create(&mut api, strangler(&[(20.0, secs(1)), (100.0, secs(1))], &[(100.0, PASS)], POLICY_ROLLBACK, false))
            .await;
    until(&api, &passing.id, secs(30), |r| r.phase() == Phase::Succeeded && !r.weights_pending).await;
    let failing = strangler(&[(20.0, secs(30)), (100.0, secs(1))], &[(100.0, FAIL)], POLICY_ROLLBACK, false);
    let failing = create(&mut api, failing).await;
    until(&api, &failing.id, secs(30), |r| r.phase() == Phase::RolledBack && !r.weights_pending).await;

    let text = ficus_testkit::wait_until(secs(10), || async {
        let (status, text) = ficus_testkit::http::get(planner.admin_addr, "/metrics").await.ok()?;
        (status == 200
            && text.contains(&format!(r#"rollout="{}",route="checkout",phase="ROLLED_BACK"}} 1"#, failing.id)))
        .then_some(text)
    })
    .await;
    let series = |rollout: &str, rest: &str| format!(r#"rollout="{rollout}",route="checkout"{rest}"#);
    for expected in [
        format!("ficus_rollout_phase{{{}", series(&passing.id, r#",phase="SUCCEEDED"} 1"#)),
        format!("ficus_rollout_phase{{{}", series(&passing.id, r#",phase="PROGRESSING"} 0"#)),
        format!("ficus_rollout_canary_weight_ratio{{{}", series(&passing.id, "} 1.0")),
        format!("ficus_rollout_canary_weight_ratio{{{}", series(&failing.id, "} 0.0")),
        "ficus_rollout_rollback_seconds_count 1".to_owned(),
        r#"ficus_rollout_duration_seconds_count{phase="SUCCEEDED"} 1"#.to_owned(),
        r#"ficus_rollout_duration_seconds_count{phase="ROLLED_BACK"} 1"#.to_owned(),
    ] {
        assert!(text.contains(&expected), "{expected} missing from\n{text}");
    }
    let verdicts = |rollout: &str, outcome: &str| {
        let prefix =
            format!("ficus_rollout_verdicts_total{{{}", series(rollout, &format!(r#",outcome="{outcome}"}} "#)));
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|count| count.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(verdicts(&passing.id, "PASS") >= 1, "the 20% stage passed:\n{text}");
    assert_eq!(verdicts(&failing.id, "FAIL"), 1, "one FAIL, then the run stopped:\n{text}");
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}

#[tokio::test]
async fn an_abort_whose_route_was_deleted_settles_and_says_so() {
    let peers = Peers::start().await;
    let (planner, mut api, stop) = peers.planner(&peers.data.path().join("planner").display().to_string()).await;
    let spec = strangler(&[(20.0, secs(60)), (100.0, secs(1))], &[(100.0, PASS)], POLICY_ROLLBACK, false);
    let rollout = create(&mut api, spec).await;
    until(&api, &rollout.id, secs(30), |r| r.step == 1 && !r.weights_pending).await;
    let delete = ficus_proto::traffic::v1::DeleteRouteRequest { name: "checkout".into(), expected_generation: 0 };
    peers.traffic_api.clone().delete_route(delete).await.expect("route deleted");
    api.abort(proto::AbortRequest { id: rollout.id.clone(), reason: String::new() }).await.expect("abort");
    let settled = until(&api, &rollout.id, secs(30), |r| r.phase() == Phase::Aborted && !r.weights_pending).await;
    assert!(settled.pending_reason.contains("no longer exists"), "{}", settled.pending_reason);
    stop.cancel();
    planner.wait().await.expect("planner stops");
    peers.stop().await;
}
