//! Logs and traces.
//!
//! Everything logs through `tracing`. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are
//! also exported over OTLP/gRPC, named by `OTEL_SERVICE_NAME` (or the service's own name)
//! with `OTEL_RESOURCE_ATTRIBUTES` added, and W3C trace context is carried on every gRPC
//! call (see [`crate::client`] and [`crate::server`]) so one trace spans every service.

use opentelemetry::{KeyValue, global, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use serde::{Deserialize, Serialize};
use tracing_subscriber::{EnvFilter, Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::ConfigError;

/// The standard variable that switches OTLP export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event for people.
    #[default]
    Text,
    /// One JSON object per event for log pipelines.
    Json,
}

/// Process-wide telemetry settings, the `telemetry` section of the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax; `RUST_LOG` itself wins when set.
    pub log_level: String,
    /// Share of traces sampled, 0 to 1; parents' decisions are followed.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { log_format: LogFormat::Text, log_level: "info".into(), sample_ratio: 1.0 }
    }
}

impl TelemetryConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::invalid("telemetry.sample_ratio", "must be between 0 and 1"));
        }
        EnvFilter::try_new(&self.log_level)
            .map_err(|error| ConfigError::invalid("telemetry.log_level", error.to_string()))?;
        Ok(())
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber is already installed.
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps trace export alive; dropping it flushes the spans still buffered.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace export did not shut down cleanly: {error}");
        }
    }
}

/// Installs the global subscriber: logs, and OTLP export when the standard environment
/// asks for it. `service` names the traces when `OTEL_SERVICE_NAME` does not.
pub fn init(config: &TelemetryConfig, service: &str) -> Result<TelemetryGuard, TelemetryError> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = match std::env::var(OTLP_ENDPOINT_ENV) {
        Ok(endpoint) if !endpoint.is_empty() => Some(otlp_provider(&endpoint, config.sample_ratio, service)?),
        _ => None,
    };
    install(config, provider.clone())?;
    Ok(TelemetryGuard { provider })
}

/// Installs the global subscriber exporting spans through `provider`; for tests that
/// collect spans in memory.
pub fn init_with_provider(config: &TelemetryConfig, provider: SdkTracerProvider) -> Result<(), TelemetryError> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    install(config, Some(provider))
}

fn otlp_provider(endpoint: &str, sample_ratio: f64, service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    let resource = resource.with_attribute(KeyValue::new("service.namespace", "ficus")).build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(sample_ratio))))
        .with_resource(resource)
        .build())
}

fn install(config: &TelemetryConfig, provider: Option<SdkTracerProvider>) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let logs = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(false).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().flatten_event(true).boxed(),
    };
    let traces = provider.map(|provider| {
        let tracer = provider.tracer("ficus");
        global::set_tracer_provider(provider);
        tracing_opentelemetry::layer().with_tracer(tracer).with_filter(LevelFilter::INFO)
    });
    tracing_subscriber::registry().with(logs.with_filter(filter)).with(traces).try_init()?;
    Ok(())
}
