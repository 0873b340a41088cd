//! One gRPC channel per peer address, made once and reused by the Raft
//! transport, request forwarding and status probes.
//!
//! How a channel is made is injected ([`ChannelMaker`]): real TCP in
//! production, turmoil's simulated network in the simulation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Makes a lazily-connecting channel to `addr` (`host:port`).
pub type ChannelMaker = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

/// Largest gRPC message a node sends or accepts from another node: an
/// append of up to 300 entries of at most 64 KiB each, or a snapshot chunk.
pub const PEER_MESSAGE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Timeout for establishing a TCP connection to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Real TCP channels, with mTLS unless `tls` is None.
pub fn tcp_channel_maker(tls: Option<interlock_tls::Tls>) -> ChannelMaker {
    Arc::new(move |addr: &str| {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("{addr}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // Detects a half-open connection (a peer that vanished behind a
            // partition) so the channel reconnects instead of hanging.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        Ok(match &tls {
            Some(tls) => endpoint.connect_with_connector_lazy(interlock_tls::stream::tcp_connector(tls.clone())),
            None => endpoint.connect_lazy(),
        })
    })
}

/// A cache of channels by address.
#[derive(Clone)]
pub struct Channels {
    make: ChannelMaker,
    cache: Arc<Mutex<BTreeMap<String, Channel>>>,
}

impl Channels {
    pub fn new(make: ChannelMaker) -> Self {
        Channels { make, cache: Arc::default() }
    }

    /// The channel to `addr`, made on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = cache.get(addr) {
            return Ok(channel.clone());
        }
        let channel = (self.make)(addr)?;
        cache.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
