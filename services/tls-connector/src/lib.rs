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

/// How to dial an address: its authority, and whether over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dial<'a> {
    /// `host:port`.
    pub authority: &'a str,
    /// Whether the address is to be dialled over TLS.
    pub tls: bool,
}

impl<'a> Dial<'a> {
    /// How to dial `address` (`https://host:port`, `http://host:port` or `host:port`) for
    /// a client that has TLS settings or not. `https://` is always TLS and `http://` never;
    /// a bare `host:port` is TLS when the client has settings. An `http://` address for a
    /// client with TLS settings is refused: the caller meant TLS, and would otherwise send
    /// its credentials in the clear. The error says why.
    pub fn of(address: &'a str, tls_configured: bool) -> Result<Self, String> {
        let (scheme, authority) = match address.split_once("://") {
            Some((scheme, authority)) => (Some(scheme), authority),
            None => (None, address),
        };
        let tls = match (scheme, tls_configured) {
            (Some("http"), true) => {
                return Err("TLS is configured for this client; write https:// or no scheme".to_owned());
            }
            (Some("http"), false) => false,
            (Some("https"), _) => true,
            (None, configured) => configured,
            (Some(other), _) => return Err(format!("`{other}://` is not http:// or https://")),
        };
        Ok(Self { authority, tls })
    }

    /// The URI of the address with the scheme it is dialled with.
    pub fn uri(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.authority)
    }
}

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

#[cfg(test)]
mod tests {
    use super::Dial;

    #[test]
    fn the_scheme_and_the_settings_decide_together() {
        let dial = |address, configured| Dial::of(address, configured).map(|dial| (dial.authority, dial.tls));
        assert_eq!(dial("shop:7004", false), Ok(("shop:7004", false)));
        assert_eq!(dial("shop:7004", true), Ok(("shop:7004", true)));
        assert_eq!(dial("https://shop:7004", false), Ok(("shop:7004", true)));
        assert_eq!(dial("http://shop:7004", false), Ok(("shop:7004", false)));
        assert!(dial("http://shop:7004", true).is_err(), "no token in the clear");
        assert!(dial("ftp://shop:7004", false).is_err());
        assert_eq!(Dial::of("shop:7004", true).map(|dial| dial.uri()), Ok("https://shop:7004".to_owned()));
    }
}
