//! The ficus v1 API contract.
//!
//! One module per service, generated from `proto/`. Every message also implements
//! `serde::Serialize` and `serde::Deserialize` following the proto3 JSON mapping, so a
//! rollout spec written as YAML or JSON decodes into exactly the message the gRPC API takes.

#![allow(clippy::all, missing_docs)]

/// Session storage shared by both environments.
pub mod sessions {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("ficus.sessions.v1");
        include!(concat!(env!("OUT_DIR"), "/ficus.sessions.v1.serde.rs"));
    }
}

/// Routes, weights, rules and request statistics.
pub mod traffic {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("ficus.traffic.v1");
        include!(concat!(env!("OUT_DIR"), "/ficus.traffic.v1.serde.rs"));
    }
}

/// Canary-versus-baseline judgement.
pub mod analysis {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("ficus.analysis.v1");
        include!(concat!(env!("OUT_DIR"), "/ficus.analysis.v1.serde.rs"));
    }
}

/// Rollout plans and their state machine.
pub mod planner {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("ficus.planner.v1");
        include!(concat!(env!("OUT_DIR"), "/ficus.planner.v1.serde.rs"));
    }
}

/// The encoded `FileDescriptorSet` of every ficus proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ficus_descriptor.bin"));

/// Fully qualified gRPC service names, as health checks and reflection list them.
pub mod service_names {
    /// `ficus.sessions.v1.SessionStore`.
    pub const SESSIONS: &str = "ficus.sessions.v1.SessionStore";
    /// `ficus.traffic.v1.TrafficControl`.
    pub const TRAFFIC: &str = "ficus.traffic.v1.TrafficControl";
    /// `ficus.analysis.v1.Analysis`.
    pub const ANALYSIS: &str = "ficus.analysis.v1.Analysis";
    /// `ficus.planner.v1.Planner`.
    pub const PLANNER: &str = "ficus.planner.v1.Planner";
}

/// Conversions between the protobuf well-known time types and `std::time`.
pub mod time {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use pbjson_types::Timestamp;

    /// `at` as a protobuf timestamp; times before 1970 are clamped to the epoch.
    pub fn timestamp(at: SystemTime) -> Timestamp {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp {
            seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
        }
    }

    /// A protobuf timestamp as a `SystemTime`; `None` when it is before 1970 or malformed.
    pub fn system_time(at: &Timestamp) -> Option<SystemTime> {
        let seconds = u64::try_from(at.seconds).ok()?;
        let nanos = u32::try_from(at.nanos).ok().filter(|nanos| *nanos < 1_000_000_000)?;
        UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
    }

    /// Fields whose values are `google.protobuf.Duration`s anywhere in a `RolloutSpec`, in
    /// both spellings the mapping accepts (camelCase and the proto name). People write
    /// `10m` in them; the mapping wants `600s`.
    pub const DURATION_KEYS: &[&str] = &[
        "window",
        "interval",
        "duration",
        "retention",
        "previewWindow",
        "preview_window",
        "step",
        "initialDelay",
        "initial_delay",
    ];

    /// Whether `value` is already in the mapping's form: seconds with up to nine decimals and `s`.
    pub fn is_proto_duration(value: &str) -> bool {
        let Some(number) = value.strip_suffix('s') else { return false };
        let number = number.strip_prefix('-').unwrap_or(number);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
        !whole.is_empty() && whole.bytes().all(|b| b.is_ascii_digit()) && fraction.bytes().all(|b| b.is_ascii_digit())
    }

    /// `duration` as the mapping writes it: `86400s`, `0.500s`.
    pub fn proto_duration(duration: Duration) -> String {
        match duration.subsec_nanos() {
            0 => format!("{}s", duration.as_secs()),
            nanos => format!("{}.{nanos:09}s", duration.as_secs()),
        }
    }
}
