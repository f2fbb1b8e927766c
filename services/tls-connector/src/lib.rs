//! Dialling gRPC channels over TLS.
//!
//! A [`TlsConnector`] is what `tonic::transport::Endpoint::connect_with_connector_lazy`
//! dials with: it opens a TCP connection to the endpoint's host and port and completes a
//! TLS handshake that offers HTTP/2, checking the server's certificate against the host
//! (or a configured name). The rustls configuration is asked for at every connection, so
//! a client whose certificate or trusted CA rotates presents the new one on its next
//! connection, with the channel and its other connections untouched.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower::Service;

/// The protocol offered in the handshake: gRPC is HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// Where a connector gets the configuration of each new connection.
type ConfigSource = Arc<dyn Fn() -> Arc<rustls::ClientConfig> + Send + Sync>;

/// Connects to a channel's address over TLS, checking the server's certificate against
/// the address' host (or the configured server name).
#[derive(Clone)]
pub struct TlsConnector {
    config: ConfigSource,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Dials with the configuration `config` answers at each connection; it should offer
    /// [`ALPN_H2`]. The server's certificate must name `server_name` when given, else the
    /// host dialled.
    pub fn new(
        config: impl Fn() -> Arc<rustls::ClientConfig> + Send + Sync + 'static,
        server_name: Option<ServerName<'static>>,
    ) -> Self {
        Self { config: Arc::new(config), server_name }
    }

    /// Dials with one fixed configuration.
    pub fn fixed(config: Arc<rustls::ClientConfig>, server_name: Option<ServerName<'static>>) -> Self {
        Self::new(move || config.clone(), server_name)
    }
}

impl Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = (self.config)();
        let configured = self.server_name.clone();
        Box::pin(async move {
            let invalid =
                |reason: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {reason}"));
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            // An IPv6 address arrives bracketed, as URIs write it.
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let server_name = match configured {
                Some(name) => name,
                None => {
                    ServerName::try_from(host.clone()).map_err(|_| invalid("the host is not a valid server name"))?
                }
            };
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config).connect(server_name, stream).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
