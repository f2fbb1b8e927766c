//! Leadership through a `coordination.k8s.io` Lease, for planners running in a cluster:
//! the holder renews `spec.renewTime` three times per lease duration; another replica
//! takes the Lease over only once it has gone unrenewed for a whole duration. Every write
//! is a replace on the read `resourceVersion`, so two replicas never both win.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lease::Leadership;

/// Holds or waits for Lease `name` in `namespace` until `shutdown`, reporting leadership
/// (with the tenure's acquire time in milliseconds as its fencing token) on the returned channel.
pub fn run(
    client: kube::Client,
    namespace: &str,
    name: &str,
    holder: String,
    ttl: Duration,
    shutdown: CancellationToken,
) -> Leadership {
    let (report, leadership) = watch::channel(None);
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(ttl / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held: Option<u64> = None;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => break,
            }
            held = match try_hold(&leases, &name, &holder, ttl).await {
                Ok(token) => token,
                Err(error) => {
                    tracing::warn!(%error, lease = %name, "cannot reach the leader Lease");
                    None
                }
            };
            report.send_if_modified(|current| {
                let changed = *current != held;
                *current = held;
                changed
            });
        }
        report.send_replace(None);
        if held.is_some() {
            release(&leases, &name, &holder).await;
        }
    });
    leadership
}

/// One round: creates, renews or takes over the Lease; the token when this replica holds it.
async fn try_hold(leases: &Api<Lease>, name: &str, holder: &str, ttl: Duration) -> Result<Option<u64>, kube::Error> {
    let now = Timestamp::now();
    let seconds = i32::try_from(ttl.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = leases.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => {
                tracing::info!(holder, "took the leader Lease");
                Ok(Some(token_of(now)))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let transitions = spec.lease_transitions.unwrap_or(0);
    let ours = spec.holder_identity.as_deref() == Some(holder);
    if !ours {
        let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(seconds)));
        let expired = match (&spec.holder_identity, &spec.renew_time) {
            (Some(other), Some(renewed)) if !other.is_empty() => {
                renewed.0.checked_add(duration).is_ok_and(|end| end < now)
            }
            _ => true,
        };
        if !expired {
            return Ok(None);
        }
        spec.holder_identity = Some(holder.to_owned());
        // Tenures' tokens rise even when this clock is behind the previous holder's.
        let previous =
            spec.acquire_time.as_ref().and_then(|time| time.0.checked_add(SignedDuration::from_millis(1)).ok());
        spec.acquire_time = Some(MicroTime(previous.filter(|next| *next > now).unwrap_or(now)));
        spec.lease_transitions = Some(transitions + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    let token = token_of(spec.acquire_time.as_ref().map_or(now, |time| time.0));
    match leases.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => {
            if !ours {
                tracing::info!(holder, "took over the leader Lease");
            }
            Ok(Some(token))
        }
        // Someone else wrote it first: they hold it, or will renew it.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(error) => Err(error),
    }
}

/// The fencing token of a tenure acquired at `acquired`: its Unix time in milliseconds,
/// which rises with every takeover (see [`try_hold`]) and, unlike the transition count,
/// also over a Lease that was deleted and created again, and over tokens of the store's
/// own lease, which are drawn the same way.
fn token_of(acquired: Timestamp) -> u64 {
    u64::try_from(acquired.as_millisecond()).unwrap_or(0).max(1)
}

/// Hands the Lease over at once instead of making the next replica wait out its duration.
async fn release(leases: &Api<Lease>, name: &str, holder: &str) {
    let Ok(Some(mut lease)) = leases.get_opt(name).await else { return };
    let Some(spec) = lease.spec.as_mut().filter(|spec| spec.holder_identity.as_deref() == Some(holder)) else {
        return;
    };
    spec.holder_identity = None;
    spec.renew_time = None;
    if let Err(error) = leases.replace(name, &PostParams::default(), &lease).await {
        tracing::debug!(%error, "cannot release the leader Lease; it expires instead");
    }
}
