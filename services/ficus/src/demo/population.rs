//! The demo's synthetic users: each has a stable user id (the sticky key), keeps its
//! session cookie, and checks every answer: its visit count must go on from where it was
//! (or the session was lost), and while the weight only rises it must never move from
//! the new side back to the old one.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::app::{SERVED_BY, SESSION_COOKIE};

/// The header carrying a user's id, the route's sticky key.
pub const USER_HEADER: &str = "x-user-id";

/// Requests and errors seen on one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SideCounts {
    /// Answers from this side.
    pub requests: u64,
    /// 5xx answers from this side.
    pub errors: u64,
}

/// What the population saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Answers from the legacy application.
    pub legacy: SideCounts,
    /// Answers from the new application.
    pub new: SideCounts,
    /// Requests that got no answer from either.
    pub failed: u64,
    /// Users whose visit count restarted: their session was lost.
    pub lost_sessions: u64,
    /// Users who moved from the new side back to the old one while the weight only rose.
    pub flips: u64,
}

#[derive(Default)]
struct User {
    /// The epoch of the last answer that set `on_new`.
    epoch: u64,
    cookie: Option<String>,
    visits: u64,
    on_new: bool,
    lost: bool,
    flipped: bool,
}

/// The running population.
pub struct Population {
    observed: Arc<Mutex<Observed>>,
    users: Arc<Vec<Mutex<User>>>,
    rising: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Population {
    /// Starts `users` users, each sending `rate` requests per second through `proxy`,
    /// until stopped or `limit` has passed.
    pub fn start(proxy: SocketAddr, users: usize, rate: f64, limit: Duration) -> Self {
        let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let observed = Arc::new(Mutex::new(Observed::default()));
        let people: Arc<Vec<Mutex<User>>> = Arc::new((0..users).map(|_| Mutex::new(User::default())).collect());
        let rising = Arc::new(AtomicBool::new(true));
        let epoch = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
        let tasks = (0..users)
            .map(|index| {
                let (client, observed, people, rising, epoch, stop) =
                    (client.clone(), observed.clone(), people.clone(), rising.clone(), epoch.clone(), stop.clone());
                tokio::spawn(async move {
                    // Spread the first requests so users do not all arrive at once.
                    let offset = period.mul_f64(index as f64 / users.max(1) as f64);
                    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let deadline = tokio::time::sleep(limit);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = ticks.tick() => {}
                            () = stop.cancelled() => return,
                            () = &mut deadline => return,
                        }
                        let sides = Sides {
                            rising: rising.load(Ordering::SeqCst),
                            epoch: epoch.load(Ordering::SeqCst),
                            now: &epoch,
                        };
                        visit(&client, proxy, index, &people[index], &observed, sides).await;
                    }
                })
            })
            .collect();
        Self { observed, users: people, rising, epoch, stop, tasks }
    }

    /// Says whether the weight is only rising now, so moves back count as flips.
    pub fn set_rising(&self, rising: bool) {
        self.rising.store(rising, Ordering::SeqCst);
    }

    /// Starts a new epoch: sides seen before it (e.g. before traffic was reset for a new
    /// release) no longer count when deciding whether a user moved back.
    pub fn forget_sides(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops every user and returns what was seen.
    pub async fn stop(self) -> Observed {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let mut observed = self.observed.lock().clone();
        observed.lost_sessions = self.users.iter().filter(|user| user.lock().lost).count() as u64;
        observed.flips = self.users.iter().filter(|user| user.lock().flipped).count() as u64;
        observed
    }
}

/// Whether moves back counted when a request started, and the epoch it started in: a
/// request sent before traffic was reset must not count as a move back after it.
struct Sides<'a> {
    rising: bool,
    epoch: u64,
    /// The epoch now: an answer to a request sent in an earlier epoch says nothing
    /// about the user's side under the current weights.
    now: &'a AtomicU64,
}

async fn visit(
    client: &Client<HttpConnector, Empty<Bytes>>,
    proxy: SocketAddr,
    index: usize,
    user: &Mutex<User>,
    observed: &Mutex<Observed>,
    sides: Sides<'_>,
) {
    let cookie = user.lock().cookie.clone();
    let mut request = Request::builder().uri(format!("http://{proxy}/")).header(USER_HEADER, format!("user-{index}"));
    if let Some(cookie) = &cookie {
        request = request.header(header::COOKIE, format!("{SESSION_COOKIE}={cookie}"));
    }
    let Ok(request) = request.body(Empty::new()) else { return };
    let response = match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
        Ok(Ok(response)) => response,
        _ => {
            observed.lock().failed += 1;
            return;
        }
    };
    let status = response.status();
    let on_new = response.headers().get(SERVED_BY).is_some_and(|v| v.as_bytes() == b"v2");
    let set_cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .and_then(|pair| pair.strip_prefix(&format!("{SESSION_COOKIE}=")))
        .map(str::to_owned);
    let body = response.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
    {
        let mut observed = observed.lock();
        let side = if on_new { &mut observed.new } else { &mut observed.legacy };
        side.requests += 1;
        if status.is_server_error() {
            side.errors += 1;
        }
    }
    let mut user = user.lock();
    if status.is_success() && sides.epoch == sides.now.load(Ordering::SeqCst) {
        let same_epoch = sides.epoch == user.epoch;
        if same_epoch && sides.rising && user.on_new && !on_new {
            user.flipped = true;
        }
        user.epoch = sides.epoch;
        user.on_new = on_new;
    }
    if status.is_success() {
        let visits = std::str::from_utf8(&body).ok().and_then(|text| text.trim().parse::<u64>().ok()).unwrap_or(0);
        if user.cookie.is_some() && visits != user.visits + 1 {
            user.lost = true;
        }
        user.visits = visits;
        if let Some(cookie) = set_cookie {
            user.cookie = Some(cookie);
        }
    }
}
