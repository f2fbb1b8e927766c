//! Accepting TLS connections for a gRPC server: handshakes run beside each other, each
//! with a deadline and their number bounded, so a client that stalls in a handshake, or
//! many, cannot keep others from being served.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::pki_types::CertificateDer;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::ServerTls;

/// How long a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at most; connections beyond are closed at once.
const MAX_HANDSHAKES: usize = 1024;

/// How long accepting pauses after the listener fails (e.g. out of file descriptors),
/// rather than spinning on the error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A TLS connection a server accepted.
pub(crate) struct Connection(TlsStream<TcpStream>);

/// Who is at the other end of a TLS connection; in each call's request extensions, so
/// cloned for every call: the certificate is shared, not copied.
#[derive(Clone, Debug)]
pub(crate) struct TlsPeer {
    /// The leaf certificate the client presented, already verified against
    /// `server.tls.client_ca`.
    pub(crate) certificate: Option<Arc<CertificateDer<'static>>>,
}

impl Connected for Connection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        let (_, session) = self.0.get_ref();
        TlsPeer { certificate: session.peer_certificates().and_then(<[_]>::first).cloned().map(Arc::new) }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Connections accepted on `listener` whose handshake with the current configuration of
/// `tls` succeeded, until `stop`. Failed handshakes are logged and dropped.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    stop: CancellationToken,
) -> ReceiverStream<Result<Connection, std::io::Error>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                () = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many TLS handshakes in progress; connection closed");
                continue;
            };
            // Replies are small and latency matters more than packet count: no Nagle.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%peer, %error, "cannot disable Nagle's algorithm");
            }
            let acceptor = TlsAcceptor::from(tls.current());
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        drop(permit);
                        let _ = sender.send(Ok(Connection(stream))).await;
                    }
                    Ok(Err(error)) => tracing::info!(%peer, %error, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake not completed in time"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
