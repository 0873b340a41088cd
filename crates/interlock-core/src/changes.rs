//! Which shards an applied command may have changed, and a short history of
//! it: what lets a controller's assignment watch look again at the few
//! replicas a change touched instead of rebuilding its whole assignment on
//! every applied entry (10 000 replicas per controller at fleet size).
//!
//! The rule is conservative by construction: the commands that come by the
//! thousand in a mass failover (promotions, acknowledgements, fences, lease
//! grants and revokes, key-value writes, batches of those) name the shards
//! they touch; everything else counts as touching every shard.

use crate::command::Command;
use crate::state::State;
use crate::vocab::{shard_key, shard_of_primary_lease};
use std::collections::{BTreeSet, VecDeque};

/// What one applied command may have changed in controllers' assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// Only these shards' records, replicas and primary leases (by shard
    /// key; empty: none): nothing else an assignment is made of — no
    /// controller, topology, backup, restore test or runbook execution.
    Shards(BTreeSet<String>),
    /// Anything: look at every replica again.
    All,
}

impl Touched {
    fn none() -> Touched {
        Touched::Shards(BTreeSet::new())
    }

    fn add(&mut self, other: Touched) {
        match (self, other) {
            (Touched::All, _) => {}
            (this, Touched::All) => *this = Touched::All,
            (Touched::Shards(mine), Touched::Shards(theirs)) => mine.extend(theirs),
        }
    }
}

impl State {
    /// The shards `command` may have changed when applied to this state
    /// (called after the apply: no command below moves a replica to another
    /// shard, so the replica's shard is the same before and after).
    pub fn touched_by(&self, command: &Command) -> Touched {
        let shard = |key: &str| Touched::Shards(BTreeSet::from([key.to_string()]));
        let lease = |key: &str| shard_of_primary_lease(key).map_or_else(Touched::none, shard);
        match command {
            Command::Put { .. } | Command::Delete { .. } | Command::Note { .. } | Command::Audit { .. } => {
                Touched::none()
            }
            Command::LeaseGrant { key, .. } | Command::LeaseRevoke { key, .. } => lease(key),
            Command::Promote { shard: key, .. } | Command::Fence { shard: key, .. } => shard(key),
            Command::Acknowledge { replica, .. } => match self.replicas.get(replica) {
                Some(r) => shard(&shard_key(&r.service, &r.shard)),
                None => Touched::none(),
            },
            Command::Batch { commands } => {
                let mut touched = Touched::none();
                for command in commands {
                    touched.add(self.touched_by(command));
                }
                touched
            }
            _ => Touched::All,
        }
    }
}

/// Applied entries remembered, at most.
pub const CHANGES_KEPT: usize = 4096;

/// What the last [`CHANGES_KEPT`] applied entries touched, by log index.
/// Not replicated and not in snapshots: each node keeps its own, from
/// what it applied since it started (or installed a snapshot).
#[derive(Debug, Clone, Default)]
pub struct ChangeJournal {
    entries: VecDeque<(u64, Touched)>,
    /// Nothing is known of what entries up to this index touched.
    unknown_through: u64,
}

impl ChangeJournal {
    /// A journal that knows nothing before `index` (a node that starts from
    /// a snapshot, or installs one).
    pub fn starting_at(index: u64) -> ChangeJournal {
        ChangeJournal { entries: VecDeque::new(), unknown_through: index }
    }

    /// Records what the entry at `index` touched.
    pub fn record(&mut self, index: u64, touched: Touched) {
        if touched == Touched::none() {
            return;
        }
        if self.entries.len() == CHANGES_KEPT {
            if let Some((evicted, _)) = self.entries.pop_front() {
                self.unknown_through = self.unknown_through.max(evicted);
            }
        }
        self.entries.push_back((index, touched));
    }

    /// What the entries after `after` touched, together (`All` if some of
    /// them are no longer remembered).
    pub fn since(&self, after: u64) -> Touched {
        if after < self.unknown_through {
            return Touched::All;
        }
        let mut touched = Touched::none();
        for (_, t) in self.entries.iter().rev().take_while(|(index, _)| *index > after) {
            touched.add(t.clone());
            if touched == Touched::All {
                break;
            }
        }
        touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Topology;
    use crate::vocab::{primary_lease_key, ReplicaRole, RevokeReason};

    fn shards(keys: &[&str]) -> Touched {
        Touched::Shards(keys.iter().map(|k| k.to_string()).collect())
    }

    #[test]
    fn the_frequent_commands_name_their_shards_and_the_rest_touch_everything() {
        let mut state = State::default();
        state.replicas.insert(
            "r1".into(),
            crate::model::Replica {
                id: "r1".into(),
                service: "orders".into(),
                shard: "7".into(),
                region: "eu".into(),
                priority: 1,
                address: String::new(),
                role: ReplicaRole::Replica,
                controller: None,
                acked: None,
            },
        );
        let lease_key = primary_lease_key("orders/3");
        let cases = [
            (Command::Put { key: "k".into(), value: vec![] }, shards(&[])),
            (Command::LeaseGrant { key: "lock/a".into(), holder: "h".into(), ttl_ms: 1000 }, shards(&[])),
            (
                Command::LeaseRevoke { key: lease_key.clone(), token: None, reason: RevokeReason::Expired },
                shards(&["orders/3"]),
            ),
            (
                Command::Acknowledge { replica: "r1".into(), epoch: 1, role: ReplicaRole::Primary, position: 0 },
                shards(&["orders/7"]),
            ),
            (
                Command::Acknowledge { replica: "gone".into(), epoch: 1, role: ReplicaRole::Primary, position: 0 },
                shards(&[]),
            ),
            (
                Command::Batch {
                    commands: vec![
                        Command::Fence {
                            shard: "orders/1".into(),
                            replica: "x".into(),
                            expected_epoch: 1,
                            reason: String::new(),
                        },
                        Command::LeaseGrant { key: lease_key, holder: "h".into(), ttl_ms: 1000 },
                    ],
                },
                shards(&["orders/1", "orders/3"]),
            ),
            (Command::ApplyTopology { topology: Topology::default() }, Touched::All),
            (Command::RegisterController { id: "c".into(), region: "eu".into(), replicas: vec![] }, Touched::All),
        ];
        for (command, want) in cases {
            assert_eq!(state.touched_by(&command), want, "{command}");
        }
    }

    #[test]
    fn the_journal_unions_what_came_after_a_version_and_says_all_once_it_forgot() {
        let mut journal = ChangeJournal::starting_at(10);
        assert_eq!(journal.since(3), Touched::All, "before what this node applied");
        assert_eq!(journal.since(10), shards(&[]));
        journal.record(11, shards(&["a/1"]));
        journal.record(12, shards(&[]));
        journal.record(13, shards(&["a/2"]));
        assert_eq!(journal.since(10), shards(&["a/1", "a/2"]));
        assert_eq!(journal.since(11), shards(&["a/2"]));
        assert_eq!(journal.since(13), shards(&[]));
        journal.record(14, Touched::All);
        assert_eq!(journal.since(13), Touched::All);
        for i in 0..CHANGES_KEPT as u64 {
            journal.record(15 + i, shards(&["a/3"]));
        }
        assert_eq!(journal.since(12), Touched::All, "entry 13 was forgotten");
        assert_eq!(journal.since(14 + CHANGES_KEPT as u64 - 1), shards(&["a/3"]));
    }
}
