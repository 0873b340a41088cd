//! Glue between tonic and turmoil's simulated TCP: a listener stream for the
//! server side and a channel maker for the client side. Production code
//! never sees turmoil; it receives these through `Assembly` and `Client`.

use interlock_server::raft::channels::ChannelMaker;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// The gRPC port every simulated coordinator listens on.
pub const GRPC_PORT: u16 = 7001;

/// A simulated TCP connection, as tonic's server wants it.
pub struct SimIo(pub turmoil::net::TcpStream);

impl Connected for SimIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepted simulated connections, as a stream for `serve_with_incoming`.
pub fn incoming(listener: turmoil::net::TcpListener) -> impl futures::Stream<Item = std::io::Result<SimIo>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| SimIo(stream));
        Some((accepted, listener))
    })
}

/// Channels over the simulated network. `addr` is `host:port`.
pub fn channel_maker() -> ChannelMaker {
    Arc::new(|addr: &str| {
        let target = addr.to_string();
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("{addr}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            // Simulated TCP drops what a partition swallows and never
            // retransmits: a connection that lost a frame is dead, and only
            // HTTP/2 pings notice it.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let target = target.clone();
            async move {
                let stream = turmoil::net::TcpStream::connect(target.as_str()).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        })))
    })
}

/// One channel per endpoint, for an SDK client inside the simulation.
pub fn channels(endpoints: &[String]) -> Vec<Channel> {
    let make = channel_maker();
    endpoints.iter().filter_map(|e| make(e).ok()).collect()
}
