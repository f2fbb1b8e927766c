//! Runs: judging one stage every interval over a window, for as long as the stage lasts.
//!
//! A run's definition and latest verdict are written to the store on every judgement, so
//! `GetRun` answers after a restart and a run still going when the service stopped
//! resumes where it was. Its sequential test starts afresh on resume: each restart of a
//! running run opens a new test, which can add up to another alpha of false-failure risk
//! for that run.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use ficus_kit::store::{Expect, Store};
use ficus_proto::{analysis::v1 as proto, time};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use prost::Message;
use rand::RngCore;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    error::Error,
    judge::Judge,
    request::{self, RunSpec},
    source::Sources,
};

/// Key prefix of runs in the store.
const PREFIX: &str = "runs/";

/// How long a finished run stays readable.
const FINISHED_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Verdicts a watcher may fall behind before it skips to the latest.
const VERDICT_BUFFER: usize = 64;

/// A run in progress.
#[derive(Debug)]
struct Active {
    run: Mutex<proto::Run>,
    /// Taken when the run finishes, which closes every watcher's stream.
    verdicts: Mutex<Option<broadcast::Sender<proto::Verdict>>>,
    stop: CancellationToken,
}

/// Every run of this service.
#[derive(Clone, Debug)]
pub struct Runs {
    store: Store,
    sources: Sources,
    active: Arc<Mutex<HashMap<String, Arc<Active>>>>,
    shutdown: CancellationToken,
}

impl Runs {
    /// Resumes the runs that were going when the service last stopped.
    pub async fn open(store: Store, sources: Sources, shutdown: CancellationToken) -> Result<Self, Error> {
        let runs = Self { store, sources, active: Arc::default(), shutdown };
        for entry in runs.store.scan(PREFIX).await.map_err(Error::Store)? {
            let Ok(run) = proto::Run::decode(entry.value.as_slice()) else {
                tracing::warn!(key = %entry.key, "skipping an unreadable stored run");
                continue;
            };
            if run.state() == proto::RunState::Running {
                match RunSpec::from_run(&run) {
                    Ok(spec) => runs.launch(run, spec),
                    Err(error) => tracing::warn!(run = %run.id, %error, "cannot resume a stored run"),
                }
            }
        }
        Ok(runs)
    }

    /// One judgement now.
    pub async fn analyze(&self, request: proto::AnalyzeRequest) -> Result<proto::Verdict, Error> {
        let target = request::target(request.target.as_ref(), "target")?;
        let (template_proto, template) = request::template(request.template.as_ref(), "template")?;
        self.sources.check_available(&template_proto, "template")?;
        let window = request::positive(request.window.as_ref(), "window")?.unwrap_or(request::DEFAULT_ANALYZE_WINDOW);
        let observed = self.sources.observe(&target, &template_proto.checks, window).await;
        let mut verdict = Judge::new(template, Some(1)).judge(&observed, SystemTime::now());
        // A one-shot judgement belongs to no run.
        verdict.sequence = 0;
        Ok(verdict)
    }

    /// Starts a run, or returns the one already started with the same id.
    pub async fn start(&self, request: proto::StartRunRequest) -> Result<proto::Run, Error> {
        let spec = RunSpec::from_request(&request)?;
        self.sources.check_available(&spec.template_proto, "template")?;
        let id = if request.run_id.is_empty() { new_id() } else { request::run_id(&request.run_id)? };
        if let Some(existing) = self.read(&id).await? {
            if existing.target.as_ref() != Some(&spec.target) {
                return Err(Error::AlreadyExists(id));
            }
            return Ok(existing);
        }
        let started = SystemTime::now();
        let run = proto::Run {
            id: id.clone(),
            target: Some(spec.target.clone()),
            template: Some(spec.template_proto.clone()),
            interval: Some(spec.interval.into()),
            window: spec.window.map(Into::into),
            state: proto::RunState::Running.into(),
            last_verdict: None,
            started_at: Some(time::timestamp(started)),
            ends_at: spec.duration.and_then(|duration| started.checked_add(duration)).map(time::timestamp),
            initial_delay: (!spec.initial_delay.is_zero()).then(|| spec.initial_delay.into()),
        };
        match self.store.put(&key(&id), run.encode_to_vec(), Expect::Absent, None).await {
            Ok(_) => {}
            Err(ficus_kit::store::StoreError::Conflict { .. }) => {
                return self.read(&id).await?.ok_or(Error::NotFound(id));
            }
            Err(error) => return Err(Error::Store(error)),
        }
        self.launch(run.clone(), spec);
        Ok(run)
    }

    /// A run and its latest verdict.
    pub async fn get(&self, id: &str) -> Result<proto::Run, Error> {
        if let Some(active) = self.active.lock().get(id) {
            return Ok(active.run.lock().clone());
        }
        self.read(id).await?.ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// Ends a run early; stopping a finished run returns it unchanged.
    pub async fn stop(&self, id: &str) -> Result<proto::Run, Error> {
        let active = self.active.lock().get(id).cloned();
        match active {
            Some(active) => {
                let changes = active.verdicts.lock().as_ref().map(broadcast::Sender::subscribe);
                active.stop.cancel();
                drop(active);
                if let Some(mut changes) = changes {
                    // The run task finishes by closing the channel.
                    while !matches!(changes.recv().await, Err(broadcast::error::RecvError::Closed)) {}
                }
                self.get(id).await
            }
            None => self.get(id).await,
        }
    }

    /// The latest verdict, then each new one until the run finishes.
    pub async fn watch(&self, id: &str) -> Result<impl Stream<Item = proto::Verdict> + Send + use<>, Error> {
        let active = self.active.lock().get(id).cloned();
        let (latest, changes) = match &active {
            Some(active) => {
                let changes = active.verdicts.lock().as_ref().map(|sender| BroadcastStream::new(sender.subscribe()));
                (active.run.lock().last_verdict.clone(), changes)
            }
            None => (self.get(id).await?.last_verdict, None),
        };
        let follow = active.as_ref().map(Arc::downgrade);
        let changes = futures::stream::iter(changes).flatten().filter_map(move |change| {
            let latest = follow.as_ref().and_then(|active| active.upgrade()?.run.lock().last_verdict.clone());
            async move {
                match change {
                    Ok(verdict) => Some(verdict),
                    Err(BroadcastStreamRecvError::Lagged(_)) => latest,
                }
            }
        });
        Ok(futures::stream::iter(latest).chain(changes))
    }

    fn launch(&self, run: proto::Run, spec: RunSpec) {
        let (verdicts, _) = broadcast::channel(VERDICT_BUFFER);
        let active = Arc::new(Active {
            run: Mutex::new(run.clone()),
            verdicts: Mutex::new(Some(verdicts)),
            stop: CancellationToken::new(),
        });
        self.active.lock().insert(run.id.clone(), active.clone());
        let runs = self.clone();
        // The run's judgements belong to the trace of the call that started it.
        tokio::spawn(async move { runs.drive(active, spec).await }.in_current_span());
    }

    async fn drive(self, active: Arc<Active>, spec: RunSpec) {
        let (id, started) = {
            let run = active.run.lock();
            (run.id.clone(), run.started_at.as_ref().and_then(time::system_time).unwrap_or_else(SystemTime::now))
        };
        let planned_looks = spec.duration.map(|duration| looks(duration, spec.interval));
        let mut judge = Judge::new(spec.template.clone(), planned_looks);
        if spec.window.is_some() {
            judge = judge.with_sliding_window();
        }
        match self.store.get(&judge_key(&id)).await {
            Ok(Some(entry)) => match serde_json::from_slice(&entry.value) {
                Ok(saved) => judge = judge.resume(saved),
                Err(error) => tracing::warn!(run = %id, %error, "unreadable judge state; its tests start again"),
            },
            Ok(None) => {}
            Err(error) => tracing::warn!(run = %id, %error, "cannot read the judge state; its tests start again"),
        }
        // Judging starts after the warm-up and reads only what follows it; a run resumed
        // after a restart waits for what is left of it.
        // Durations are capped at validation, so these sums fit; checked all the same, as a
        // panic here would stop the run without a word.
        let judged_from = started.checked_add(spec.initial_delay).unwrap_or(started);
        let warming = judged_from.duration_since(SystemTime::now()).unwrap_or_default();
        let now = tokio::time::Instant::now();
        let first = now.checked_add(warming.saturating_add(spec.interval)).unwrap_or(now);
        let mut ticks = tokio::time::interval_at(first, spec.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = active.stop.cancelled() => break,
                // Left RUNNING in the store: the next start resumes it.
                () = self.shutdown.cancelled() => return,
            }
            let now = SystemTime::now();
            let window = spec
                .window
                .unwrap_or_else(|| now.duration_since(judged_from).unwrap_or_default().max(Duration::from_secs(1)));
            let observed = self.sources.observe(&spec.target, &spec.template_proto.checks, window).await;
            let verdict = judge.judge(&observed, now);
            // The tests' state first: if the verdict's write is lost, the state is one look
            // ahead, which only ever makes it more careful (p-values never rise).
            let saved = serde_json::to_vec(&judge.saved()).unwrap_or_default();
            if let Err(error) = self.store.put(&judge_key(&id), saved, Expect::Any, None).await {
                tracing::warn!(run = %id, %error, "cannot record the judge state");
            }
            let snapshot = {
                let mut run = active.run.lock();
                run.last_verdict = Some(verdict.clone());
                run.clone()
            };
            if let Err(error) = self.store.put(&key(&id), snapshot.encode_to_vec(), Expect::Any, None).await {
                tracing::warn!(run = %id, %error, "cannot record a verdict; it is still streamed");
            }
            if let Some(sender) = active.verdicts.lock().as_ref() {
                let _ = sender.send(verdict);
            }
            if spec.duration.is_some_and(|duration| now.duration_since(started).unwrap_or_default() >= duration) {
                break;
            }
        }
        let finished = {
            let mut run = active.run.lock();
            run.state = proto::RunState::Finished.into();
            run.clone()
        };
        if let Err(error) =
            self.store.put(&key(&id), finished.encode_to_vec(), Expect::Any, Some(FINISHED_RETENTION)).await
        {
            tracing::warn!(run = %id, %error, "cannot record that a run finished");
        }
        if let Err(error) = self.store.delete(&judge_key(&id), Expect::Any).await {
            tracing::debug!(run = %id, %error, "cannot delete the judge state of a finished run");
        }
        self.active.lock().remove(&id);
        // Dropping the sender ends every watcher's stream.
        active.verdicts.lock().take();
    }

    async fn read(&self, id: &str) -> Result<Option<proto::Run>, Error> {
        let Some(entry) = self.store.get(&key(id)).await.map_err(Error::Store)? else { return Ok(None) };
        proto::Run::decode(entry.value.as_slice())
            .map(Some)
            .map_err(|error| Error::Corrupt(format!("run `{id}`: {error}")))
    }
}

/// How many judgements a run of `duration` makes.
fn looks(duration: Duration, interval: Duration) -> u32 {
    let looks = duration.as_secs_f64() / interval.as_secs_f64();
    (looks.ceil() as u32).max(1)
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// Where a run's sequential state is kept, beside the run (outside its prefix, so listing
/// runs never reads it).
fn judge_key(id: &str) -> String {
    format!("judge/{id}")
}

fn new_id() -> String {
    let mut bytes = [0_u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
