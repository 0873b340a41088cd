//! TLS streams for tonic, over any transport: the server side wraps
//! accepted connections (real TCP, or the simulation's) and hands tonic a
//! stream whose connection info names the peer; the client side is a
//! connector for `Endpoint::connect_with_connector`.

use crate::identity::{self, PeerIdentity};
use crate::Tls;
use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;
use tonic::transport::Uri;

/// A handshake that takes longer than this is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// What the server knows of the other end of a connection; tonic puts it in
/// every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The peer's certificate identity (None: the link is plaintext).
    pub identity: Option<PeerIdentity>,
}

/// An accepted connection after its TLS handshake.
pub struct TlsIo<S> {
    stream: tokio_rustls::server::TlsStream<S>,
    info: PeerInfo,
}

impl<S> Connected for TlsIo<S> {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Runs the server side of the handshake on `stream`.
pub async fn accept<S>(tls: &Tls, stream: S, remote_addr: Option<SocketAddr>) -> std::io::Result<TlsIo<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let configs = tls.configs();
    let acceptor = tokio_rustls::TlsAcceptor::from(configs.server.clone());
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
    let identity = match leaf {
        Some(leaf) => Some(
            identity::of(&leaf, configs.peer_ca_subject.as_deref())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
        ),
        None => None,
    };
    Ok(TlsIo { stream, info: PeerInfo { remote_addr, identity } })
}

/// TLS connections for `serve_with_incoming`, from a stream of accepted
/// connections. Handshakes run concurrently, each with a deadline, so a slow
/// or hostile client holds up nobody; a failed one is logged and dropped.
pub fn incoming<S, L>(tls: Tls, mut accepted: L) -> impl Stream<Item = std::io::Result<TlsIo<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    L: Stream<Item = std::io::Result<(S, Option<SocketAddr>)>> + Unpin + Send + 'static,
{
    use futures::StreamExt;
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        while let Some(next) = accepted.next().await {
            let Ok((stream, remote)) = next else { continue };
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                match accept(&tls, stream, remote).await {
                    Ok(io) => {
                        let _ = tx.send(Ok(io)).await;
                    }
                    Err(e) => tracing::info!(peer = ?remote, "TLS handshake refused: {e}"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Accepted TCP connections (with `TCP_NODELAY`), for [`incoming`].
pub fn tcp_accepted(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<(tokio::net::TcpStream, Option<SocketAddr>)>> + Unpin + Send + 'static {
    Box::pin(futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, addr)| {
            // Nagle's algorithm would hold small Raft replies back for tens of ms.
            let _ = stream.set_nodelay(true);
            (stream, Some(addr))
        });
        Some((next, listener))
    }))
}

type Dialed<S> = Pin<Box<dyn Future<Output = std::io::Result<S>> + Send>>;

/// A connector for tonic channels that dials `host:port` with `dial` (real
/// TCP, or the simulation's) and runs the client side of the handshake,
/// checking the server's certificate against the URI's host.
pub fn connector<S, D>(
    tls: Tls,
    dial: D,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<S>>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<tokio_rustls::client::TlsStream<S>>>> + Send,
> + Clone
       + Send
       + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: Fn(String) -> Dialed<S> + Clone + Send + Sync + 'static,
{
    tower::service_fn(move |uri: Uri| {
        let (tls, dial) = (tls.clone(), dial.clone());
        async move {
            let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
            let host = uri.host().ok_or_else(|| invalid(format!("{uri}: no host")))?.to_string();
            let port = uri.port_u16().ok_or_else(|| invalid(format!("{uri}: no port")))?;
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| invalid(format!("{host}: not a server name: {e}")))?;
            let stream = dial(format!("{host}:{port}")).await?;
            let connector = tokio_rustls::TlsConnector::from(tls.client_config());
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            Ok(TokioIo::new(stream))
        }
    })
}

/// [`connector`] over real TCP (with `TCP_NODELAY`).
pub fn tcp_connector(
    tls: Tls,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>> + Send,
> + Clone
       + Send
       + 'static {
    connector(tls, |addr: String| -> Dialed<tokio::net::TcpStream> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    })
}
