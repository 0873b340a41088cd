//! Glue between tonic and turmoil's simulated TCP, with the real mTLS on
//! top: a listener stream for the server side and a channel maker for the
//! client side. Production code never sees turmoil; it receives these
//! through `Assembly` and `Client`.

use interlock_server::raft::channels::ChannelMaker;
use interlock_tls::Tls;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The gRPC port every simulated coordinator listens on.
pub const GRPC_PORT: u16 = 7001;

/// Accepted simulated connections after their TLS handshake, for
/// `serve_with_incoming`: the node's real acceptor over simulated TCP.
pub fn incoming(
    tls: Tls,
    listener: turmoil::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<interlock_tls::stream::TlsIo<turmoil::net::TcpStream>>> {
    let accepted = Box::pin(futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, addr)| (stream, Some(addr)));
        Some((accepted, listener))
    }));
    interlock_tls::stream::incoming(tls, accepted)
}

/// mTLS channels over the simulated network. `addr` is `host:port`.
pub fn channel_maker(tls: Tls) -> ChannelMaker {
    Arc::new(move |addr: &str| {
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
        let dial = |target: String| -> Pin<Box<dyn Future<Output = std::io::Result<turmoil::net::TcpStream>> + Send>> {
            Box::pin(async move { turmoil::net::TcpStream::connect(target.as_str()).await })
        };
        Ok(endpoint.connect_with_connector_lazy(interlock_tls::stream::connector(tls.clone(), dial)))
    })
}

/// One channel per endpoint, for an SDK client inside the simulation.
pub fn channels(endpoints: &[String], tls: &Tls) -> Vec<Channel> {
    let make = channel_maker(tls.clone());
    endpoints.iter().filter_map(|e| make(e).ok()).collect()
}
