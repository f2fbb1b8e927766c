//! The `Analysis` gRPC service: decoding requests, calling [`Runs`], encoding answers.

use std::pin::Pin;

use ficus_proto::analysis::v1::{self as proto, analysis_server::Analysis};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::runs::Runs;

/// The `Analysis` service.
#[derive(Clone, Debug)]
pub struct AnalysisService {
    runs: Runs,
    shutdown: CancellationToken,
}

impl AnalysisService {
    /// Serves `runs`; verdict streams end when `shutdown` is cancelled.
    pub fn new(runs: Runs, shutdown: CancellationToken) -> Self {
        Self { runs, shutdown }
    }
}

type VerdictStream = Pin<Box<dyn Stream<Item = Result<proto::Verdict, Status>> + Send>>;

#[tonic::async_trait]
impl Analysis for AnalysisService {
    async fn analyze(&self, request: Request<proto::AnalyzeRequest>) -> Result<Response<proto::Verdict>, Status> {
        ficus_kit::auth::audit::note(&request);
        Ok(Response::new(self.runs.analyze(request.into_inner()).await?))
    }

    async fn start_run(&self, request: Request<proto::StartRunRequest>) -> Result<Response<proto::Run>, Status> {
        ficus_kit::auth::audit::note(&request);
        Ok(Response::new(self.runs.start(request.into_inner()).await?))
    }

    async fn get_run(&self, request: Request<proto::GetRunRequest>) -> Result<Response<proto::Run>, Status> {
        Ok(Response::new(self.runs.get(&request.into_inner().id).await?))
    }

    async fn watch_run(&self, request: Request<proto::WatchRunRequest>) -> Result<Response<VerdictStream>, Status> {
        let verdicts = self.runs.watch(&request.into_inner().id).await?;
        let verdicts = verdicts.map(Ok).take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(verdicts)))
    }

    async fn stop_run(&self, request: Request<proto::StopRunRequest>) -> Result<Response<proto::Run>, Status> {
        ficus_kit::auth::audit::note(&request);
        Ok(Response::new(self.runs.stop(&request.into_inner().id).await?))
    }
}
