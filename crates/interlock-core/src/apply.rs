//! [`State::apply`]: the whole state machine, as a thin dispatcher. Each
//! command is validated, handed to the capability that owns it, and its
//! events are recorded; region changes then reroute every service.

use crate::command::{Command, Request};
use crate::state::{Effects, State};
use crate::vocab::{Refusal, Response};
use crate::{failover, kv, lease, routing, topology};

impl State {
    /// Applies `request`, which was committed at log `index`.
    ///
    /// Total and deterministic: the same state and the same request always
    /// give the same result, on every replica, without panicking. A refused
    /// command changes nothing but the revision.
    pub fn apply(&mut self, index: u64, request: &Request) -> Response {
        self.revision = self.revision.max(index);
        self.last_at_unix_ms = self.last_at_unix_ms.max(request.at_unix_ms);
        if let Err(e) = request.command.validate() {
            // Only a buggy or hostile proposer gets here; refuse deterministically.
            return Response::refused(Refusal::InvalidArgument, e.to_string());
        }
        let mut fx = Effects::new(index, request.at_unix_ms);
        let fx = &mut fx;
        let response = match &request.command {
            Command::Put { .. } | Command::Delete { .. } => apply_kv(self, index, &request.command),
            Command::Batch { commands } => {
                Response::Batch { responses: commands.iter().map(|c| apply_kv(self, index, c)).collect() }
            }
            Command::ApplyTopology { topology } => topology::apply(self, topology, fx),
            Command::RegisterController { id, region, identity, replicas } => {
                topology::register_controller(self, id, region, identity, replicas, fx)
            }
            Command::LeaseGrant { key, holder, ttl_ms } => lease::grant(self, key, holder, *ttl_ms, fx),
            Command::LeaseRevoke { key, token, reason } => lease::revoke(self, key, *token, *reason, fx),
            Command::DeclareRegionLost { region, reason } => failover::declare_region_lost(self, region, reason, fx),
            Command::SetRegionState { region, state, reason } => {
                failover::change_region_state(self, region, *state, reason, fx)
            }
            Command::SetMaintenance { region, on, reason } => {
                failover::set_maintenance(self, region.as_deref(), *on, reason, fx)
            }
            Command::Promote { shard, replica, expected_epoch, mode, reason } => {
                failover::promote(self, shard, replica, *expected_epoch, *mode, reason, fx)
            }
            Command::Demote { shard, expected_epoch, to, reason } => {
                failover::demote(self, shard, *expected_epoch, to, reason, fx)
            }
            Command::Acknowledge { replica, epoch, role, position } => {
                failover::acknowledge(self, replica, *epoch, *role, *position, fx)
            }
            Command::Fence { shard, replica, expected_epoch, reason } => {
                failover::fence(self, shard, replica, *expected_epoch, reason, fx)
            }
            Command::AwaitOperator { shard, reason } => failover::await_operator(self, shard, reason, fx),
            Command::Note { kind, subject, message } => {
                fx.event(kind, subject, message.clone());
                Response::Applied { revision: index }
            }
            Command::SetRouting { service, weights, overrides, reason } => {
                routing::set_routing(self, service, weights, overrides, reason, fx)
            }
            Command::Drain { region, undrain, step_bps, interval_ms, reason } => {
                routing::drain(self, region, *undrain, *step_bps, *interval_ms, reason, fx)
            }
            Command::DrainStep { region, expected_fraction_bps } => {
                routing::drain_step(self, region, *expected_fraction_bps, fx)
            }
        };
        // Region states shape routing: a lost, recovering or re-declared
        // region reroutes every service (never refused; see routing/apply.rs).
        if matches!(response, Response::Applied { .. })
            && matches!(
                request.command,
                Command::ApplyTopology { .. } | Command::DeclareRegionLost { .. } | Command::SetRegionState { .. }
            )
        {
            routing::reroute_forced(self, fx);
        }
        let events = std::mem::take(&mut fx.events);
        self.record(events);
        debug_assert_eq!(self.validate(), Ok(()));
        response
    }
}

/// A key-value write at `index`, on its own or as part of a batch.
fn apply_kv(state: &mut State, index: u64, command: &Command) -> Response {
    match command {
        Command::Put { key, value } => kv::put(state, index, key, value),
        Command::Delete { key } => kv::delete(state, index, key),
        // Batch validation admits nothing else; never panic on a log entry.
        other => Response::refused(Refusal::InvalidArgument, format!("{other} cannot be batched")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KvEntry;

    fn put(key: &str, value: &[u8]) -> Request {
        Request { at_unix_ms: 5, command: Command::Put { key: key.into(), value: value.to_vec() } }
    }

    #[test]
    fn put_and_delete_track_revisions() {
        let mut state = State::default();
        assert_eq!(state.apply(3, &put("a", b"1")), Response::Applied { revision: 3 });
        assert_eq!(state.apply(4, &put("a", b"2")), Response::Applied { revision: 4 });
        assert_eq!(state.kv["a"], KvEntry { value: b"2".to_vec(), mod_revision: 4 });
        state.apply(5, &Request { at_unix_ms: 6, command: Command::Delete { key: "a".into() } });
        assert!(state.kv.is_empty());
        assert_eq!((state.revision, state.last_at_unix_ms), (5, 6));
    }

    #[test]
    fn a_batch_applies_its_writes_in_order_at_one_revision() {
        let mut state = State::default();
        let commands = vec![
            Command::Put { key: "a".into(), value: b"1".to_vec() },
            Command::Put { key: "b".into(), value: b"2".to_vec() },
            Command::Delete { key: "a".into() },
            Command::Put { key: "b".into(), value: b"3".to_vec() },
        ];
        let response = state.apply(7, &Request { at_unix_ms: 9, command: Command::Batch { commands } });
        assert_eq!(response, Response::Batch { responses: vec![Response::Applied { revision: 7 }; 4] });
        assert_eq!(state.kv.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(state.kv["b"], KvEntry { value: b"3".to_vec(), mod_revision: 7 });
        assert_eq!((state.revision, state.last_at_unix_ms), (7, 9));

        // A batch that validation refuses changes nothing but the revision.
        let grant = Command::LeaseGrant { key: "l".into(), holder: "h".into(), ttl_ms: 1000 };
        let refused = state.apply(8, &Request { at_unix_ms: 10, command: Command::Batch { commands: vec![grant] } });
        assert!(matches!(refused, Response::Refused { code: Refusal::InvalidArgument, .. }), "{refused:?}");
        assert!(state.leases.is_empty());
    }

    #[test]
    fn an_invalid_command_is_refused_and_changes_nothing_but_the_revision() {
        let mut state = State::default();
        let response = state.apply(1, &put("", b"x"));
        assert!(
            matches!(response, Response::Refused { code: Refusal::InvalidArgument, reason } if reason.contains("key"))
        );
        assert!(state.kv.is_empty());
    }

    #[test]
    fn same_log_same_bytes() {
        let log: Vec<Request> = (0..50).map(|i| put(&format!("k{}", i % 7), &[i as u8])).collect();
        let run = || {
            let mut s = State::default();
            for (i, r) in log.iter().enumerate() {
                s.apply(i as u64 + 1, r);
            }
            crate::codec::encode(&s).expect("encode")
        };
        assert_eq!(run(), run());
    }
}
