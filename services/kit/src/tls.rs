//! TLS set-up shared by every client a service opens (Redis, Prometheus).

/// Installs ring as rustls' process-wide crypto provider. rustls can only infer one when
/// exactly one is compiled in, which other dependencies may change; installing it
/// explicitly keeps TLS working either way. If the application installed its own provider
/// first, that one stays. Call it before building any TLS client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
