//! [`Watcher`]: a watch that survives node failures and resumes where it was.

use crate::{Client, ClientError, WatchResponse};
use interlock_proto::v1::controller_client::ControllerClient;
use interlock_proto::v1::WatchRequest;
use std::time::Duration;
use tonic::Streaming;

/// A resumable watch on one topic (`events`, `leases`, `controller/<id>`).
///
/// For `events`, a reconnect resumes after the last version delivered, so the
/// caller sees every event once, in order; a message with `resync` set means
/// the server no longer had some of them.
pub struct Watcher {
    client: Client,
    topic: String,
    filter: WatchFilter,
    after_version: u64,
    index: usize,
    stream: Option<Streaming<WatchResponse>>,
}

/// What a watcher wants of its topic; the default is everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Only what starts with this: an event's subject (`events`), a lease's
    /// key (`leases`), a service's name (`routing`).
    pub key_prefix: String,
    /// `events` only: these kinds (a kind ending in "." is a family,
    /// `"shard."`); empty: every kind.
    pub kinds: Vec<String>,
}

impl Client {
    /// Watches `topic` from after `after_version` (0: from the oldest kept).
    pub fn watch(&self, topic: &str, after_version: u64) -> Watcher {
        self.watch_filtered(topic, after_version, WatchFilter::default())
    }

    /// Watches only what `filter` selects of `topic`: the server sends (and
    /// wakes the watcher for) nothing else. A bad filter is an
    /// `InvalidArgument` naming the field, on the first `next()`.
    pub fn watch_filtered(&self, topic: &str, after_version: u64, filter: WatchFilter) -> Watcher {
        Watcher {
            client: self.clone(),
            topic: topic.to_string(),
            filter,
            after_version,
            index: self.preferred_index(),
            stream: None,
        }
    }
}

impl Watcher {
    /// The version of the last message delivered.
    pub fn version(&self) -> u64 {
        self.after_version
    }

    /// The next change, reconnecting (to any node) as needed within the
    /// client's retry budget.
    pub async fn next(&mut self) -> Result<WatchResponse, ClientError> {
        let started = tokio::time::Instant::now();
        let mut backoff = self.client.options().backoff_initial;
        loop {
            if self.stream.is_none() {
                let request = WatchRequest {
                    topic: self.topic.clone(),
                    after_version: self.after_version,
                    key_prefix: self.filter.key_prefix.clone(),
                    kinds: self.filter.kinds.clone(),
                };
                let mut rpc = ControllerClient::new(self.client.channel(self.index));
                match rpc.watch(request).await {
                    Ok(response) => self.stream = Some(response.into_inner()),
                    Err(status) => {
                        let retry = matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded);
                        if !retry || started.elapsed() > self.client.options().retry_budget {
                            return Err(ClientError::from_status(status, None));
                        }
                        self.index = self.client.next_endpoint(self.index, &status);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else { continue };
            match stream.message().await {
                Ok(Some(message)) => {
                    self.after_version = self.after_version.max(message.version);
                    return Ok(message);
                }
                Ok(None) | Err(_) => {
                    // The node went away: resume from the last version elsewhere.
                    self.stream = None;
                    self.index = (self.index + 1) % self.client.endpoints().len();
                }
            }
        }
    }
}
