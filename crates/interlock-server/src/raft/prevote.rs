//! Elections that start as soon as the leader is gone and do not fail: a
//! pre-vote before every campaign.
//!
//! openraft 0.9 campaigns on its own timer: its leader lease
//! (`election_timeout_max`) plus a random election timeout without a word
//! from the leader — 2.4–2.8 s with the old `wan` timing. A candidate whose
//! log is behind campaigns all the same; two candidates split the vote; and
//! every failed round costs another timeout (the simulation's region-loss
//! tail: 9.7 s at p99, with one election of 4.9 s after a leader kill).
//!
//! The driver here asks first. Every `heartbeat / 2`, a voter whose own
//! lease has run out (it has not heard a leader for `election_timeout_max`)
//! sends `Raft.PreVote` to the other voters. Each answers, without changing
//! anything, how much of its leader lease is left and how long its log is.
//! The node campaigns (`trigger().elect()`) only when a majority, itself
//! included, would grant its vote now: their lease has run out and its log
//! is at least as long as theirs — so the voter with the longest log goes
//! first, and a node cut off alone never disturbs a leader the others still
//! hear. openraft's own timer stays, as the fallback if the pre-vote cannot
//! decide (its lease and timeout are unchanged).
//!
//! Pre-votes are advisory: openraft's vote handler still decides, so a wrong
//! answer costs a round, never safety. Logs are compared by their last
//! index (openraft does not expose the last entry's term); a longer log of
//! an older term can mislead a round, which the fallback timer settles.

use interlock_core::NodeId;
use interlock_proto::raft::raft_client::RaftClient;
use interlock_proto::raft::RaftMessage;
use interlock_store::Raft;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// A candidate's question: would you vote for me now?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// Index of the candidate's last log entry.
    pub last_log_index: Option<u64>,
}

/// The answer: what the voter's vote handler would look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteReply {
    /// How long the voter still refuses votes: what is left of the lease it
    /// gave the leader it last heard (0: none).
    pub lease_left_ms: u64,
    pub last_log_index: Option<u64>,
}

/// Whether `replies` (from the other voters that answered) and this node
/// itself make a majority of `voters` that would grant this node's vote.
pub fn would_win(own_log: Option<u64>, replies: &[PreVoteReply], voters: usize) -> bool {
    let grants = 1 + replies.iter().filter(|r| r.lease_left_ms == 0 && r.last_log_index <= own_log).count();
    grants * 2 > voters
}

/// What is left of the lease a node gave its leader, at `now`: openraft
/// refuses every vote while `now <= last_heard + lease` (a committed vote
/// only — a candidate's vote leases nothing).
fn lease_left(raft_state_lease: Option<(Instant, bool)>, lease: Duration, now: Instant) -> Duration {
    match raft_state_lease {
        Some((heard, true)) => (heard + lease + Duration::from_millis(1)).saturating_duration_since(now),
        _ => Duration::ZERO,
    }
}

/// The node's own vote: when it last changed or was refreshed by a leader,
/// and whether it is a committed (leader's) vote.
async fn own_vote(raft: &Raft) -> Option<(Instant, bool)> {
    raft.with_raft_state(|s| s.vote_last_modified().map(|at| (at, s.vote_ref().is_committed()))).await.ok().flatten()
}

fn lease_of(raft: &Raft) -> Duration {
    Duration::from_millis(raft.config().election_timeout_max)
}

/// The voter's side: answers from its Raft state, changes nothing.
pub async fn answer(raft: &Raft) -> PreVoteReply {
    let left = lease_left(own_vote(raft).await, lease_of(raft), Instant::now());
    PreVoteReply { lease_left_ms: left.as_millis() as u64, last_log_index: raft.metrics().borrow().last_log_index }
}

/// Runs pre-votes and campaigns, forever (one per node).
pub async fn run_election_driver(ctx: std::sync::Arc<crate::ctx::NodeCtx>) {
    let raft = ctx.raft.clone();
    let config = raft.config().clone();
    let tick = Duration::from_millis((config.heartbeat_interval / 2).max(10));
    let lease = lease_of(&raft);
    // After a campaign, the next waits an election timeout (as openraft's
    // own timer would), so that a lost round is not retried every tick.
    let mut next_campaign = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let (voters, peers, own_log) = {
            let m = raft.metrics();
            let m = m.borrow();
            if m.state == openraft::ServerState::Leader || now < next_campaign {
                continue;
            }
            let membership = m.membership_config.membership();
            let voters: Vec<NodeId> = membership.voter_ids().collect();
            if !voters.contains(&ctx.id) || voters.len() < 2 {
                continue;
            }
            let peers: Vec<(NodeId, String)> = voters
                .iter()
                .filter(|v| **v != ctx.id)
                .filter_map(|v| membership.get_node(v).map(|n| (*v, n.grpc_addr.clone())))
                .collect();
            (voters.len(), peers, m.last_log_index)
        };
        if lease_left(own_vote(&raft).await, lease, now) > Duration::ZERO {
            continue; // this node still hears (or just heard) a leader
        }
        let request = PreVoteRequest { candidate: ctx.id, last_log_index: own_log };
        let asks = peers.iter().map(|(id, addr)| ask(&ctx, *id, addr, request, tick * 2));
        let replies: Vec<PreVoteReply> = futures::future::join_all(asks).await.into_iter().flatten().collect();
        if would_win(own_log, &replies, voters) {
            tracing::info!(node = ctx.id, votes = replies.len() + 1, voters, "pre-vote won: campaigning");
            let _ = raft.trigger().elect().await;
            let timeout = interlock_store::runtime::between(config.election_timeout_min, config.election_timeout_max);
            next_campaign = Instant::now() + Duration::from_millis(timeout);
        }
    }
}

/// One pre-vote question; None if the peer did not answer in time.
async fn ask(
    ctx: &crate::ctx::NodeCtx,
    peer: NodeId,
    addr: &str,
    request: PreVoteRequest,
    timeout: Duration,
) -> Option<PreVoteReply> {
    let channel = ctx.channels.get(addr).ok()?;
    let payload = interlock_core::codec::encode(&request).ok()?;
    let mut client = RaftClient::new(channel);
    let call = client.pre_vote(RaftMessage { payload, to: peer });
    let reply = tokio::time::timeout(timeout, call).await.ok()?.ok()?;
    interlock_core::codec::decode(&reply.into_inner().payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lease_left_ms: u64, last_log_index: u64) -> PreVoteReply {
        PreVoteReply { lease_left_ms, last_log_index: Some(last_log_index) }
    }

    #[test]
    fn a_majority_with_expired_leases_and_no_longer_log_wins() {
        // (own log, replies, voters, wins)
        let cases: &[(u64, &[PreVoteReply], usize, bool)] = &[
            (10, &[reply(0, 10)], 3, true),  // the leader's region is gone: the survivor agrees
            (10, &[reply(0, 12)], 3, false), // the other has the longer log: it goes first
            (12, &[reply(0, 10)], 3, true),
            (10, &[reply(300, 10), reply(0, 10)], 3, true), // one still hears the leader, one does not
            (10, &[reply(300, 10), reply(300, 10)], 3, false), // cut off alone: disturbs nobody
            (10, &[], 3, false),                            // nobody answered
            (10, &[reply(0, 9), reply(300, 9)], 5, false),  // 2 of 5 voters
            (10, &[reply(0, 9), reply(0, 9), reply(5, 1)], 5, true),
        ];
        for (own, replies, voters, wins) in cases {
            assert_eq!(would_win(Some(*own), replies, *voters), *wins, "own {own}, {replies:?}, {voters} voters");
        }
        // A node with an empty log defers to any log.
        assert!(!would_win(None, &[reply(0, 1)], 3));
        assert!(would_win(None, &[PreVoteReply { lease_left_ms: 0, last_log_index: None }], 3));
    }

    #[test]
    fn only_a_leaders_committed_vote_leases() {
        let now = Instant::now();
        let lease = Duration::from_millis(1000);
        assert_eq!(lease_left(None, lease, now), Duration::ZERO);
        assert_eq!(lease_left(Some((now, false)), lease, now), Duration::ZERO);
        assert!(lease_left(Some((now, true)), lease, now) > lease);
        assert_eq!(lease_left(Some((now, true)), lease, now + lease + Duration::from_millis(2)), Duration::ZERO);
    }
}
