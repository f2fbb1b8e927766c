//! A run outlives a restart of the analysis service: it resumes from the store and its
//! sequential tests continue where they stood, instead of starting again (each new start
//! would risk another alpha of false failures).

use std::time::Duration;

use ficus_proto::analysis::v1::{self as proto, analysis_client::AnalysisClient};
use ficus_testkit::wait_until;
use tokio_util::sync::CancellationToken;

async fn analysis(
    store: &str,
) -> (ficus_kit::server::Running, CancellationToken, AnalysisClient<tonic::transport::Channel>) {
    let shutdown = CancellationToken::new();
    let config = ficus_analysis::Config::ephemeral(store, "127.0.0.1:1");
    let running = ficus_analysis::start(config, shutdown.clone()).await.expect("analysis starts");
    let api = AnalysisClient::new(ficus_testkit::grpc::channel(running.grpc_addr));
    (running, shutdown, api)
}

/// The run's first verdict judged after `after` (any verdict when `None`).
async fn next_verdict(
    api: &AnalysisClient<tonic::transport::Channel>,
    after: Option<&proto::Verdict>,
) -> proto::Verdict {
    wait_until(Duration::from_secs(20), || {
        let mut api = api.clone();
        async move {
            let run = api.get_run(proto::GetRunRequest { id: "stage".into() }).await.ok()?.into_inner();
            run.last_verdict.filter(|verdict| after.is_none_or(|after| verdict.judged_at != after.judged_at))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_continues_its_sequence() {
    let data = tempfile::tempdir().expect("temp dir");
    let store = data.path().display().to_string();
    let (running, shutdown, mut api) = analysis(&store).await;
    let template = proto::AnalysisTemplate {
        checks: vec![proto::Check {
            name: "fixed".into(),
            metric: Some(proto::Metric {
                source: Some(proto::metric::Source::Fixed(proto::FixedMetric {
                    baseline: 0.0,
                    canary: 0.0,
                    samples: 1_000,
                })),
            }),
            rule: Some(proto::check::Rule::Threshold(proto::Threshold { max: Some(0.5), min: None })),
            ..Default::default()
        }],
        ..Default::default()
    };
    let request = proto::StartRunRequest {
        target: Some(proto::Target { route: "checkout".into(), baseline: "stable".into(), canary: "canary".into() }),
        template: Some(template),
        interval: Some(Duration::from_secs(1).into()),
        window: None,
        duration: Some(Duration::from_secs(120).into()),
        run_id: "stage".into(),
        initial_delay: None,
    };
    api.start_run(request).await.expect("run starts");
    let first = next_verdict(&api, None).await;
    let second = next_verdict(&api, Some(&first)).await;
    shutdown.cancel();
    running.wait().await.expect("analysis stops");

    let (_running, _shutdown, api) = analysis(&store).await;
    let stored = api.clone().get_run(proto::GetRunRequest { id: "stage".into() }).await.expect("get").into_inner();
    let last = stored.last_verdict.expect("the last verdict was stored");
    assert!(last.sequence >= second.sequence);
    let resumed = next_verdict(&api, Some(&last)).await;
    assert_eq!(resumed.sequence, last.sequence + 1);
    assert!(resumed.sequence > second.sequence, "the run went on instead of starting again: {resumed:?}");
}
