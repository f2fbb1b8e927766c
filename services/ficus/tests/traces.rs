//! One stage transition is one trace across planner, traffic and analysis: `ficus up`
//! exports its spans over OTLP/gRPC to a real receiver run by this test.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ficus_proto::{
    analysis::v1 as analysis,
    planner::v1::{self as planner, Phase, planner_client::PlannerClient},
    service_names::{PLANNER, TRAFFIC},
    traffic::v1::{self as traffic, traffic_control_client::TrafficControlClient},
};
use ficus_testkit::{ServiceProcess, free_port, wait_until};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    trace::v1::Span,
};
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

/// An OTLP/gRPC trace receiver that keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|resource| resource.scope_spans)
            .flat_map(|scope| scope.spans);
        self.spans.lock().extend(spans);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn loopback() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// The span named `name` whose parent is `parent`, if any.
fn child<'a>(spans: &'a [Span], parent: &Span, name: &str) -> Option<&'a Span> {
    spans
        .iter()
        .find(|span| span.name == name && span.parent_span_id == parent.span_id && span.trace_id == parent.trace_id)
}

#[tokio::test]
async fn a_stage_transition_is_one_trace_across_the_services() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let collector: SocketAddr = listener.local_addr().expect("addr");
    let server = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let data = tempfile::tempdir().expect("temp dir");
    let (planner_addr, traffic_addr) = (loopback(), loopback());
    let env = [
        ("FICUS_PLANNER__SERVER__GRPC_ADDR", planner_addr.clone()),
        ("FICUS_PLANNER__SERVER__ADMIN_ADDR", loopback()),
        ("FICUS_ANALYSIS__SERVER__GRPC_ADDR", loopback()),
        ("FICUS_ANALYSIS__SERVER__ADMIN_ADDR", loopback()),
        ("FICUS_TRAFFIC__SERVER__GRPC_ADDR", traffic_addr.clone()),
        ("FICUS_TRAFFIC__SERVER__ADMIN_ADDR", loopback()),
        ("FICUS_TRAFFIC__PROXY__LISTEN", loopback()),
        ("FICUS_SESSIONS__SERVER__GRPC_ADDR", loopback()),
        ("FICUS_SESSIONS__SERVER__ADMIN_ADDR", loopback()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let data_dir = data.path().display().to_string();
    let mut process =
        ServiceProcess::spawn_with_args(env!("CARGO_BIN_EXE_ficus"), &["up", "--data-dir", &data_dir], &env);
    for (addr, service) in [(&planner_addr, PLANNER), (&traffic_addr, TRAFFIC)] {
        ServiceProcess::wait_serving_at(addr.parse().expect("addr"), service, Duration::from_secs(30)).await;
    }

    let mut traffic_api = TrafficControlClient::new(ficus_testkit::grpc::channel(traffic_addr.parse().expect("addr")));
    let route = ficus_testkit::route::two_backends("checkout", ("legacy", "127.0.0.1:1"), ("k8s", "127.0.0.1:2"), 0);
    traffic_api
        .put_route(traffic::PutRouteRequest { route: Some(route), expected_generation: 0 })
        .await
        .expect("route");
    let passing = analysis::AnalysisTemplate {
        checks: vec![analysis::Check {
            name: "forced".into(),
            metric: Some(analysis::Metric {
                source: Some(analysis::metric::Source::Fixed(analysis::FixedMetric {
                    baseline: 0.0,
                    canary: 0.0,
                    samples: 1_000,
                })),
            }),
            rule: Some(analysis::check::Rule::Threshold(analysis::Threshold { max: Some(0.5), min: None })),
            ..Default::default()
        }],
        ..Default::default()
    };
    let spec = planner::RolloutSpec {
        route: "checkout".into(),
        stable_backend: "legacy".into(),
        canary_backend: "k8s".into(),
        strategy: Some(planner::rollout_spec::Strategy::Strangler(planner::StranglerStrategy {
            stages: vec![
                planner::Stage { weight: 50.0, window: Some(Duration::from_secs(1).into()), progress_deadline: None },
                planner::Stage { weight: 100.0, window: Some(Duration::from_secs(1).into()), progress_deadline: None },
            ],
            window: None,
        })),
        analysis: Some(planner::AnalysisSpec {
            template: Some(passing),
            interval: Some(Duration::from_secs(1).into()),
            stage_templates: vec![],
            initial_delay: None,
        }),
        ..Default::default()
    };
    let mut planner_api = PlannerClient::new(ficus_testkit::grpc::channel(planner_addr.parse().expect("addr")));
    let rollout = planner_api
        .create_rollout(planner::CreateRolloutRequest { spec: Some(spec), id: "traced".into() })
        .await
        .expect("rollout")
        .into_inner();
    wait_until(Duration::from_secs(60), || {
        let mut api = planner_api.clone();
        let id = rollout.id.clone();
        async move {
            let rollout = api.get_rollout(planner::GetRolloutRequest { id }).await.ok()?.into_inner();
            (rollout.phase() == Phase::Succeeded).then_some(())
        }
    })
    .await;

    // The 50% stage: the planner's span, its calls to traffic and analysis, and their
    // server spans, all in one trace.
    let set_weights = "ficus.traffic.v1.TrafficControl/SetWeights";
    let start_run = "ficus.analysis.v1.Analysis/StartRun";
    let spans = receiver.spans.clone();
    wait_until(Duration::from_secs(30), || {
        let spans = spans.clone();
        async move {
            let spans = spans.lock().clone();
            let stages = spans.iter().filter(|span| span.name == "rollout.stage");
            let traced = stages.into_iter().any(|stage| {
                let through =
                    |name: &str| child(&spans, stage, name).and_then(|client| child(&spans, client, name)).is_some();
                through(set_weights) && through(start_run)
            });
            traced.then_some(())
        }
    })
    .await;
    process.terminate();
    process.wait_exit(Duration::from_secs(30)).await;
}
