//! TLS for every gRPC server and client of ficus, from PEM files that are re-read when they
//! change, so cert-manager and Secret rotation need no restart and drop no connection.
//!
//! A server's `server.tls` names its certificate chain, its key and, for mutual TLS, the
//! CA its clients' certificates must chain to. A client's TLS settings name the CA it
//! trusts and the certificate it presents. Each new connection uses the files as they were
//! last read; connections already open keep the session they started with.

mod acceptor;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use ficus_tls_connector::{ALPN_H2, TlsConnector};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub(crate) use self::acceptor::{TlsPeer, incoming};
use crate::reload;

/// Installs ring as rustls' process-wide crypto provider. rustls can only infer one when
/// exactly one is compiled in, which other dependencies may change; installing it
/// explicitly keeps TLS working either way. If the application installed its own provider
/// first, that one stays. Call it before building any TLS client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The provider every ficus TLS configuration is built with, whatever is installed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's TLS, the `server.tls` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// The server's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates, PEM, that clients' certificates must chain to: mutual TLS. Map
    /// certificate subjects to roles with `server.auth.mtls_roles`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Whether a client without a certificate may still connect (and then authenticate
    /// with a token); with `client_ca` only.
    #[serde(default)]
    pub client_cert_optional: bool,
}

/// A client's TLS: whom it trusts and what it presents; the `[client.tls]` section of the
/// command and `server.peer_tls` of a service calling its peers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// CA certificates, PEM, the server's certificate must chain to; the system's roots
    /// when unset.
    pub ca_cert: Option<PathBuf>,
    /// A certificate chain to present, PEM, for servers that require mutual TLS.
    pub cert: Option<PathBuf>,
    /// The key of `cert`, PEM.
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the host of the
    /// address dialled (e.g. dialling an IP).
    pub server_name: Option<String>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The files were read but do not make a TLS configuration (e.g. a key that does not
    /// match the certificate).
    #[error("{0}")]
    Config(String),
    /// Only one of a client's `cert` and `key` is set.
    #[error("`cert` and `key` go together: set both or neither")]
    HalfIdentity,
    /// `server_name` is not a DNS name or IP address.
    #[error("`{0}` is not a DNS name or IP address")]
    ServerName(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_owned(), reason: reason.to_string() }
}

/// The certificates of a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| file_error(path, error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(path, error))?;
    if certificates.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| file_error(path, error))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots.add(certificate).map_err(|error| file_error(path, error))?;
    }
    Ok(roots)
}

fn config_error(error: impl std::fmt::Display) -> TlsError {
    TlsError::Config(error.to_string())
}

impl ServerTlsConfig {
    /// The files to follow for changes.
    fn files(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()].into_iter().flatten().cloned().collect()
    }

    fn build(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider);
                let verifier = if self.client_cert_optional { verifier.allow_unauthenticated() } else { verifier };
                builder.with_client_cert_verifier(verifier.build().map_err(config_error)?)
            }
        };
        let mut config =
            builder.with_single_cert(certificates(&self.cert)?, private_key(&self.key)?).map_err(config_error)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }
}

/// A server's TLS configuration, current with its files; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct ServerTls {
    current: Arc<ArcSwap<rustls::ServerConfig>>,
}

impl ServerTls {
    /// Reads the files of `config` and follows them until `stop`; a service whose files
    /// do not make a configuration does not start.
    pub(crate) fn start(config: &ServerTlsConfig, stop: &CancellationToken) -> Result<Self, TlsError> {
        let files = config.files();
        let config = config.clone();
        let current = reload::load_and_follow("server TLS certificate", files, move || config.build(), stop.clone())?;
        Ok(Self { current })
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }
}

impl ClientTlsConfig {
    /// `server_name`, checked.
    fn server_name(&self) -> Result<Option<ServerName<'static>>, TlsError> {
        let name =
            |name: &str| ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()));
        self.server_name.as_deref().map(name).transpose()
    }

    fn files(&self) -> Vec<PathBuf> {
        [self.ca_cert.as_ref(), self.cert.as_ref(), self.key.as_ref()].into_iter().flatten().cloned().collect()
    }

    fn build(&self) -> Result<rustls::ClientConfig, TlsError> {
        let roots = match &self.ca_cert {
            Some(path) => roots(path)?,
            None => system_roots(),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(certificates(cert)?, private_key(key)?).map_err(config_error)?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::HalfIdentity),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }
}

/// The operating system's trusted roots; ones it has that rustls cannot use are skipped.
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "a system root certificate could not be read");
    }
    let mut roots = RootCertStore::empty();
    let (_, unusable) = roots.add_parsable_certificates(found.certs);
    if unusable > 0 {
        tracing::debug!(unusable, "system root certificates rustls cannot use were skipped");
    }
    roots
}

/// A client's TLS configuration, current with its files while anything uses it; cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct ClientTls {
    current: Arc<ArcSwap<rustls::ClientConfig>>,
    server_name: Option<ServerName<'static>>,
}

impl ClientTls {
    /// Reads the files of `config` once; [`ClientTls::follow`] keeps them current.
    pub fn load(config: &ClientTlsConfig) -> Result<Self, TlsError> {
        let server_name = config.server_name()?;
        Ok(Self { current: Arc::new(ArcSwap::from_pointee(config.build()?)), server_name })
    }

    /// Reads the files of `config` and re-reads them when they change, for as long as a
    /// clone of the answer is alive: a long-running service presents its rotated
    /// certificate on its next connection.
    pub fn follow(config: &ClientTlsConfig) -> Result<Self, TlsError> {
        let server_name = config.server_name()?;
        let (files, config) = (config.files(), config.clone());
        let build = move || config.build();
        let current = reload::load_and_follow("client TLS certificate", files, build, CancellationToken::new())?;
        Ok(Self { current, server_name })
    }

    /// The system's roots, no client certificate: for `https://` addresses given without
    /// TLS settings.
    pub fn system() -> Result<Self, TlsError> {
        Self::load(&ClientTlsConfig::default())
    }

    /// The configuration as last read, for clients that dial by themselves (e.g. the
    /// session client).
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.current.load_full()
    }

    /// A connector dialling with the configuration current at each connection.
    pub(crate) fn connector(&self) -> TlsConnector {
        let current = self.current.clone();
        TlsConnector::new(move || current.load_full(), self.server_name.clone())
    }
}
