//! [`LeaseKeeper`]: acquires a lease and keeps it alive, and tells its owner
//! the instant it must stop acting.
//!
//! The holder's rule (SPEC §3): the lease is valid until
//! `send time of the last acknowledged keepalive + TTL × (1 − drift) − margin`,
//! measured on this process's monotonic clock. The coordinator's own deadline
//! for the lease is never earlier, so when this one passes without renewal
//! the owner stops acting *before* anyone else can be granted the key.

use crate::{Client, ClientError};
use interlock_core::lease::{holder_deadline, DEFAULT_DRIFT};
use interlock_proto::v1::controller_client::ControllerClient;
use interlock_proto::v1::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// Keepalive sends still waiting for an answer, at most.
const IN_FLIGHT_MAX: usize = 64;

/// How a [`LeaseKeeper`] keeps its lease.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// The clock drift to allow for (default 2%: the holder's and the
    /// leader's clocks may each be 1% off, in opposite directions).
    pub drift: f64,
    /// Extra safety taken off every deadline.
    pub margin: Duration,
    /// Keepalive period (default: TTL / 4).
    pub keepalive_every: Option<Duration>,
    /// How fast this process's clock runs against true time (local ms per
    /// true ms). Always 1.0 in production; the simulation sets it to model a
    /// slow or fast clock, so that deadlines are computed the way such a
    /// process would.
    pub clock_rate: f64,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions { drift: DEFAULT_DRIFT, margin: Duration::from_millis(50), keepalive_every: None, clock_rate: 1.0 }
    }
}

/// Shortest keepalive period a [`LeaseOptions`] may ask for.
pub const KEEPALIVE_EVERY_MIN: Duration = Duration::from_millis(10);
/// Largest drift term accepted (beyond it the holder's deadline is mostly drift).
pub const DRIFT_MAX: f64 = 0.5;

impl LeaseOptions {
    /// Checks the options on their own: each problem names its field.
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |field: &str, reason: String| Err(ClientError::InvalidArgument(format!("{field}: {reason}")));
        if let Some(every) = self.keepalive_every.filter(|every| *every < KEEPALIVE_EVERY_MIN) {
            return invalid("keepalive_every", format!("{every:?} is shorter than {KEEPALIVE_EVERY_MIN:?}"));
        }
        if !(0.0..DRIFT_MAX).contains(&self.drift) {
            return invalid("drift", format!("{} is out of range 0 up to {DRIFT_MAX}", self.drift));
        }
        if !(self.clock_rate.is_finite() && self.clock_rate > 0.0) {
            return invalid("clock_rate", format!("{} must be a positive number", self.clock_rate));
        }
        Ok(())
    }

    /// Checks the options for a lease of `ttl`: also that a keepalive comes
    /// before the lease would run out, and that the margin leaves time to act.
    pub fn validate_for(&self, ttl: Duration) -> Result<(), ClientError> {
        self.validate()?;
        let invalid = |field: &str, reason: String| Err(ClientError::InvalidArgument(format!("{field}: {reason}")));
        if let Some(every) = self.keepalive_every.filter(|every| *every >= ttl) {
            return invalid("keepalive_every", format!("{every:?} is not shorter than the TTL {ttl:?}"));
        }
        if self.margin >= ttl {
            return invalid("margin", format!("{:?} leaves nothing of the TTL {ttl:?}", self.margin));
        }
        Ok(())
    }
}

/// What the owner may do right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Held: act until `deadline` (unless renewed before).
    Held { deadline: Instant },
    /// Lost for good: stop acting. The reason says why.
    Lost { reason: String },
}

/// Holds one lease.
pub struct LeaseKeeper {
    key: String,
    token: u64,
    ttl: Duration,
    state: watch::Receiver<LeaseState>,
    task: tokio::task::JoinHandle<()>,
    client: Client,
}

/// The holder's deadline for a keepalive sent at `send`: computed on the
/// holder's own clock, then placed on the runtime's timeline.
fn deadline_from(send: Instant, ttl_ms: u64, options: &LeaseOptions) -> Instant {
    let local_ms = holder_deadline(0, ttl_ms, options.drift, options.margin.as_millis() as u64);
    let rate = if options.clock_rate > 0.0 { options.clock_rate } else { 1.0 };
    send + Duration::from_secs_f64(local_ms as f64 / 1000.0 / rate)
}

impl LeaseKeeper {
    /// Acquires `key` for `holder` and starts keeping it.
    pub async fn acquire(
        client: &Client,
        key: &str,
        holder: &str,
        ttl: Duration,
        options: LeaseOptions,
    ) -> Result<LeaseKeeper, ClientError> {
        options.validate_for(ttl)?;
        let sent = Instant::now();
        let (token, ttl_ms) = client.lease_grant(key, holder, ttl.as_millis() as u64).await?;
        let deadline = deadline_from(sent, ttl_ms, &options);
        Ok(Self::start(client, key, token, ttl_ms, options, deadline))
    }

    /// Takes over a lease that was granted on this holder's behalf (a shard's
    /// primary lease, granted by the promotion): it is held only once one
    /// keepalive has been confirmed, counted from when that one was sent.
    pub async fn adopt(
        client: &Client,
        key: &str,
        token: u64,
        options: LeaseOptions,
    ) -> Result<LeaseKeeper, ClientError> {
        options.validate()?;
        // Through the client's shared stream, like every later keepalive: a
        // controller adopting thousands of primary leases at once (a region's
        // failover) sends them in a few messages, answered by a few
        // leadership rounds, instead of a stream and a round each, queued
        // behind its acknowledgements for a turn among the calls in flight.
        let (reply, mut answers) = mpsc::channel(1);
        let request = LeaseKeepAliveRequest { key: key.to_string(), token, seq: 0, batch: Vec::new() };
        let sent = Instant::now();
        client
            .keepalive_mux()
            .send(MuxRequest { request, stalled_after: ADOPT_STALLED_AFTER, reply })
            .await
            .map_err(|_| ClientError::Unavailable("the keepalive stream is gone".to_string()))?;
        let answer = match tokio::time::timeout(client.options().request_timeout, answers.recv()).await {
            Ok(Some(answer)) => answer,
            Ok(None) => return Err(ClientError::Unavailable(format!("lease {key}: the keepalive stream broke"))),
            Err(_) => return Err(ClientError::Unavailable(format!("lease {key}: no answer to its keepalive"))),
        };
        if !answer.ok {
            return Err(ClientError::Refused(answer.error));
        }
        options.validate_for(Duration::from_millis(answer.ttl_ms))?;
        let deadline = deadline_from(sent, answer.ttl_ms, &options);
        Ok(Self::start(client, key, token, answer.ttl_ms, options, deadline))
    }

    fn start(client: &Client, key: &str, token: u64, ttl_ms: u64, options: LeaseOptions, deadline: Instant) -> Self {
        let (tx, rx) = watch::channel(LeaseState::Held { deadline });
        let task = tokio::spawn(keep(client.clone(), key.to_string(), token, ttl_ms, options, tx, deadline));
        LeaseKeeper {
            key: key.to_string(),
            token,
            ttl: Duration::from_millis(ttl_ms),
            state: rx,
            task,
            client: client.clone(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token: pass it to anything that can check it.
    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// Whether the owner may act at this instant.
    pub fn is_held(&self) -> bool {
        matches!(self.state(), LeaseState::Held { deadline } if Instant::now() < deadline)
    }

    /// Resolves at the instant the owner must stop acting, with the reason.
    pub async fn lost(&mut self) -> String {
        loop {
            let current = self.state.borrow_and_update().clone();
            match current {
                LeaseState::Lost { reason } => return reason,
                LeaseState::Held { deadline } => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            if matches!(self.state(), LeaseState::Held { deadline: d } if d <= Instant::now()) {
                                return "the deadline passed without a renewal".to_string();
                            }
                        }
                        changed = self.state.changed() => {
                            if changed.is_err() {
                                return "the keeper stopped".to_string();
                            }
                        }
                    }
                }
            }
        }
    }

    /// Stops keeping the lease and revokes it (only if it still has our token).
    pub async fn release(self) -> Result<(), ClientError> {
        self.task.abort();
        self.client.lease_release(&self.key, self.token).await.map(|_| ())
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The keepalive loop of one lease: a keepalive every period through the
/// client's shared stream ([`KeepaliveMux`]), the deadline moved on by each
/// confirmed one, until the lease is lost.
async fn keep(
    client: Client,
    key: String,
    token: u64,
    ttl_ms: u64,
    options: LeaseOptions,
    state: watch::Sender<LeaseState>,
    mut deadline: Instant,
) {
    let every = options.keepalive_every.unwrap_or(Duration::from_millis((ttl_ms / 4).max(50)));
    // A stream that answers nothing for this long leads to a node that died
    // or was cut off without closing it: the mux tries another node, well
    // before the deadline (a new leader may be there already).
    let stalled_after = (every * 2).min(Duration::from_millis(ttl_ms / 4)).max(Duration::from_millis(200));
    let mux = client.keepalive_mux();
    let (reply, mut answers) = mpsc::channel(IN_FLIGHT_MAX);
    let mut sent: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut seq = 0u64;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                seq += 1;
                sent.insert(seq, Instant::now());
                while sent.len() > IN_FLIGHT_MAX {
                    sent.pop_first();
                }
                let request = LeaseKeepAliveRequest { key: key.clone(), token, seq, batch: Vec::new() };
                // A full mux queue loses this one: the next period sends again.
                let _ = mux.try_send(MuxRequest { request, stalled_after, reply: reply.clone() });
            }
            _ = tokio::time::sleep_until(deadline) => {
                state.send_replace(LeaseState::Lost { reason: "the deadline passed without a renewal".to_string() });
                return;
            }
            Some(a) = answers.recv() => {
                if !a.ok {
                    state.send_replace(LeaseState::Lost { reason: a.error });
                    return;
                }
                if let Some(send) = sent.remove(&a.seq) {
                    let renewed = deadline_from(send, a.ttl_ms, &options);
                    if renewed > deadline {
                        deadline = renewed;
                        state.send_replace(LeaseState::Held { deadline });
                    }
                }
                sent.retain(|s, _| *s > a.seq);
            }
        }
    }
}

/// Keepalives waiting in a client's mux queue, at most.
pub(crate) const MUX_QUEUE_MAX: usize = 16_384;

/// How long the mux waits for a node to open its keepalive stream before it
/// tries the next (a leader opens it at once; a 2 s primary lease has 1.5 s
/// left when its keepalive is due).
const MUX_OPEN_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the mux waits for the answer to an adoption's keepalive before it
/// takes its stream for dead (the lease's TTL is not known yet).
const ADOPT_STALLED_AFTER: Duration = Duration::from_millis(500);

/// Most keepalives in one message of the mux.
const MUX_BATCH_MAX: usize = 4096;

/// One keepalive for the mux to send, and where its answer goes.
pub(crate) struct MuxRequest {
    request: LeaseKeepAliveRequest,
    /// Without any answer on the stream for this long after this keepalive
    /// was sent, the stream is taken for dead.
    stalled_after: Duration,
    reply: mpsc::Sender<LeaseKeepAliveResponse>,
}

/// A sent keepalive, by the mux's own sequence number on its stream.
struct InFlight {
    seq: u64,
    sent: Instant,
    stalled_after: Duration,
    reply: mpsc::Sender<LeaseKeepAliveResponse>,
}

/// The keepalives of every lease a client keeps, on one stream to the
/// leader (a controller keeps one primary lease per shard: thousands of
/// streams would pass HTTP/2's concurrent-stream limit, and their answers
/// would each cost a write). Reconnects elsewhere when the stream breaks,
/// or when it goes silent while a keepalive waits; keepalives sent while
/// there is no stream are dropped, and their keepers send again on their
/// next period. Runs until every clone of the client is gone.
pub(crate) async fn run_keepalive_mux(client: Client, mut requests: mpsc::Receiver<MuxRequest>) {
    let mut index = client.preferred_index();
    loop {
        let (tx, rx) = mpsc::channel(IN_FLIGHT_MAX);
        let mut rpc = ControllerClient::new(client.channel(index));
        let opened = tokio::select! {
            opened = tokio::time::timeout(MUX_OPEN_TIMEOUT, rpc.lease_keep_alive(ReceiverStream::new(rx))) => opened,
            // Nobody is left to keep a lease.
            _ = requests_closed(&mut requests) => return,
        };
        let mut inbound = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                index = client.next_endpoint(index, &status);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => {
                index = (index + 1) % client.endpoints().len();
                continue;
            }
        };
        client.set_preferred(index);
        let (mut in_flight, mut next_seq) = (BTreeMap::<u64, InFlight>::new(), 0u64);
        let mut last_answer = Instant::now();
        let mut check = tokio::time::interval(Duration::from_millis(50));
        // A keepalive that waits for room on the stream, and since when. While
        // it waits, the others queue up behind it and go in its message: the
        // busier the stream, the bigger its messages (one message per
        // keepalive, 40 000 a second at 10 000 leases, did not drain).
        let mut waiting: Option<(MuxRequest, Instant)> = None;
        let broken = loop {
            tokio::select! {
                request = requests.recv(), if waiting.is_none() => {
                    let Some(first) = request else { return };
                    waiting = Some((first, Instant::now()));
                }
                room = tx.reserve(), if waiting.is_some() => {
                    let Ok(room) = room else { break "the keepalive stream closed".to_string() };
                    let mut batch = Vec::new();
                    let mut next = waiting.take().map(|(first, _)| first);
                    while let Some(MuxRequest { mut request, stalled_after, reply }) = next.take() {
                        next_seq += 1;
                        in_flight.insert(next_seq, InFlight { seq: request.seq, sent: Instant::now(), stalled_after, reply });
                        request.seq = next_seq;
                        batch.push(request);
                        if batch.len() < MUX_BATCH_MAX {
                            next = requests.try_recv().ok();
                        }
                    }
                    room.send(LeaseKeepAliveRequest { batch, ..LeaseKeepAliveRequest::default() });
                }
                answer = inbound.message() => match answer {
                    Ok(Some(a)) => {
                        last_answer = Instant::now();
                        let answers = if a.batch.is_empty() { vec![a] } else { a.batch };
                        for mut a in answers {
                            if let Some(sent) = in_flight.remove(&a.seq) {
                                a.seq = sent.seq;
                                let _ = sent.reply.try_send(a);
                            }
                        }
                    }
                    Ok(None) => break "the leader closed the keepalive stream".to_string(),
                    Err(status) => {
                        let next = client.next_endpoint(index, &status);
                        // A node that names itself but cannot serve: try another.
                        index = if next == index { (index + 1) % client.endpoints().len() } else { next };
                        break status.message().to_string();
                    }
                },
                _ = check.tick() => {
                    if let Some((first, since)) = &waiting {
                        if since.elapsed() > first.stalled_after {
                            index = (index + 1) % client.endpoints().len();
                            break format!("the keepalive stream took nothing for {:?}", first.stalled_after);
                        }
                    }
                    let Some(oldest) = in_flight.values().next() else { continue };
                    if oldest.sent.elapsed() > oldest.stalled_after && last_answer < oldest.sent {
                        index = (index + 1) % client.endpoints().len();
                        break format!("no answer for {:?}", oldest.stalled_after);
                    }
                    // Answers flow, but some keepalives were never answered
                    // (dropped by a busy leader): forget them.
                    while in_flight.values().next().is_some_and(|f| f.sent.elapsed() > f.stalled_after * 4) {
                        in_flight.pop_first();
                    }
                }
            }
        };
        tracing::debug!("keepalive stream broke ({broken}); reconnecting");
        let pause = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(pause);
        // Keepalives that come meanwhile are dropped; their keepers send again.
        loop {
            tokio::select! {
                _ = &mut pause => break,
                request = requests.recv() => if request.is_none() { return },
            }
        }
    }
}

/// Resolves once every sender of `requests` is gone (dropping what comes
/// meanwhile: there is no stream to send it on).
async fn requests_closed(requests: &mut mpsc::Receiver<MuxRequest>) {
    while requests.recv().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_that_would_break_the_keeper_are_refused_by_name() {
        let ttl = Duration::from_secs(2);
        let with = |f: fn(&mut LeaseOptions)| {
            let mut options = LeaseOptions::default();
            f(&mut options);
            options.validate_for(ttl).map_err(|e| e.to_string())
        };
        assert_eq!(with(|_| {}), Ok(()));
        type Case = (fn(&mut LeaseOptions), &'static str);
        let cases: [Case; 6] = [
            (|o| o.keepalive_every = Some(Duration::ZERO), "keepalive_every: 0ns is shorter than 10ms"),
            (|o| o.keepalive_every = Some(Duration::from_secs(2)), "keepalive_every: 2s is not shorter than the TTL"),
            (|o| o.drift = -0.1, "drift: -0.1 is out of range"),
            (|o| o.drift = f64::NAN, "drift: NaN is out of range"),
            (|o| o.clock_rate = 0.0, "clock_rate: 0 must be a positive number"),
            (|o| o.margin = Duration::from_secs(3), "margin: 3s leaves nothing of the TTL"),
        ];
        for (mutate, want) in cases {
            let got = with(mutate).expect_err(want);
            assert!(got.contains(want), "{got} does not say {want}");
        }
    }

    #[tokio::test]
    async fn acquiring_with_a_zero_keepalive_period_is_an_error_not_a_panic() {
        let client = Client::new(["127.0.0.1:1"]).expect("client");
        let options = LeaseOptions { keepalive_every: Some(Duration::ZERO), ..LeaseOptions::default() };
        let result = LeaseKeeper::acquire(&client, "k", "h", Duration::from_secs(2), options).await;
        assert!(matches!(result, Err(ClientError::InvalidArgument(ref e)) if e.contains("keepalive_every")));
    }
}
