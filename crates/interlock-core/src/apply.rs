//! [`State::apply`]: the whole state machine, as a thin dispatcher. Each
//! command is validated, handed to the capability that owns it (an approved
//! one on its requester's behalf), recorded in the audit trail when it is an
//! administrative action, and its events are kept; region changes then
//! reroute every service.

use crate::command::{Action, Command, Request};
use crate::model::StepChange;
use crate::state::{Effects, State};
use crate::vocab::{Refusal, Response};
use crate::{approval, audit, backup, failover, kv, lease, routing, runbook, topology};

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
        let by = request.by.as_str();
        let response = dispatch(self, by, &request.command, &mut fx);
        if let Command::Audit { action, outcome } = &request.command {
            audit::record(self, request.at_unix_ms, by, action.clone(), outcome.clone());
        } else {
            record_audited(self, request.at_unix_ms, by, &request.command, &response);
        }
        let events = std::mem::take(&mut fx.events);
        self.record(events);
        debug_assert_eq!(self.validate(), Ok(()));
        response
    }
}

/// Records `command` of `by` in the audit trail if it is an administrative
/// action (each command of a batch on its own), with its outcome.
fn record_audited(state: &mut State, at_unix_ms: u64, by: &str, command: &Command, response: &Response) {
    if let (Command::Batch { commands }, Response::Batch { responses }) = (command, response) {
        for (command, response) in commands.iter().zip(responses) {
            record_audited(state, at_unix_ms, by, command, response);
        }
        return;
    }
    if !audit::is_audited(by, command) {
        return;
    }
    let action = match command {
        Command::Approve { id } => match state.approvals.get(id) {
            Some(a) => format!("Approve {{ id: {id} }} of {} asked for by {}", a.action, a.requested_by),
            None => audit::describe(command),
        },
        other => audit::describe(other),
    };
    audit::record(state, at_unix_ms, by, action, audit::outcome(response));
}

/// Hands `command`, proposed by `by`, to the capability that owns it.
fn dispatch(state: &mut State, by: &str, command: &Command, fx: &mut Effects) -> Response {
    let index = fx.index;
    let response = match command {
        Command::Put { key, value } => kv::put(state, index, key, value),
        Command::Delete { key } => kv::delete(state, index, key),
        Command::Batch { commands } => Response::Batch {
            responses: commands
                .iter()
                .map(|command| match command {
                    // Validation admits nothing else; never panic on a log entry.
                    c if !c.is_batchable() => {
                        Response::refused(Refusal::InvalidArgument, format!("{c} cannot be batched"))
                    }
                    c => dispatch(state, by, c, fx),
                })
                .collect(),
        },
        Command::ApplyTopology { topology } => {
            let response = topology::apply(state, topology, fx);
            backup::trim_to_topology(state);
            response
        }
        Command::RegisterController { id, region, replicas } => {
            topology::register_controller(state, id, region, by, replicas, fx)
        }
        Command::LeaseGrant { key, holder, ttl_ms } => lease::grant(state, key, holder, *ttl_ms, by, fx),
        Command::LeaseRevoke { key, token, reason } => lease::revoke(state, key, *token, *reason, by, fx),
        Command::DeclareRegionLost { region, reason } => failover::declare_region_lost(state, region, reason, fx),
        Command::SetRegionState { region, state: to, reason } => {
            failover::change_region_state(state, region, *to, reason, fx)
        }
        Command::SetMaintenance { region, on, reason } => {
            failover::set_maintenance(state, region.as_deref(), *on, reason, fx)
        }
        Command::Promote { shard, replica, expected_epoch, mode, reason } => {
            failover::promote(state, shard, replica, *expected_epoch, *mode, reason, fx)
        }
        Command::Demote { shard, expected_epoch, to, reason } => {
            failover::demote(state, shard, *expected_epoch, to, reason, fx)
        }
        Command::Acknowledge { replica, epoch, role, position } => {
            failover::acknowledge(state, replica, *epoch, *role, *position, by, fx)
        }
        Command::Fence { shard, replica, expected_epoch, reason } => {
            failover::fence(state, shard, replica, *expected_epoch, reason, fx)
        }
        Command::AwaitOperator { shard, reason } => failover::await_operator(state, shard, reason, fx),
        Command::Note { kind, subject, message } => {
            fx.event(kind, subject, message.clone());
            Response::Applied { revision: index }
        }
        Command::SetRouting { service, weights, overrides, reason } => {
            routing::set_routing(state, service, weights, overrides, reason, fx)
        }
        Command::Drain { region, undrain, step_bps, interval_ms, reason } => {
            routing::drain(state, region, *undrain, *step_bps, *interval_ms, reason, fx)
        }
        Command::DrainStep { region, expected_fraction_bps } => {
            routing::drain_step(state, region, *expected_fraction_bps, fx)
        }
        Command::RequestApproval { action, reason, ttl_ms } => {
            approval::request(state, action, reason, *ttl_ms, by, fx)
        }
        Command::Approve { id } => match approval::approve(state, *id, by, fx) {
            Err(refused) => refused,
            Ok((Action::Command(approved), requester)) => {
                // The approved command runs now, on its requester's behalf,
                // meeting every precondition it would have met then.
                let response = dispatch(state, &requester, &approved, fx);
                approval::decided(state, *id, audit::outcome(&response), fx);
                response
            }
            Ok(_) => {
                approval::decided(state, *id, "approved; the leader carries it out".to_string(), fx);
                Response::Applied { revision: index }
            }
        },
        Command::ReportBackup { controller, shard, backup } => {
            backup::report_backup(state, controller, shard, backup, by, fx)
        }
        Command::StartRestoreTest { shard, backup, controller } => {
            backup::start_restore(state, shard, backup, controller, by, fx)
        }
        Command::FinishRestoreTest { job, controller, result } => {
            backup::finish_restore(state, *job, controller, result, by, fx)
        }
        Command::AbandonRestoreTest { job, reason } => backup::abandon_restore(state, *job, reason, by, fx),
        Command::ApplyRunbook { runbook: spec } => runbook::apply_runbook(state, spec, by, fx),
        Command::StartExecution { runbook: name, params, mode } => {
            runbook::start_execution(state, name, params, *mode, by, fx)
        }
        Command::StepTransition {
            execution,
            step,
            attempt,
            change: StepChange::Effect { target, command: effect, positions_lost },
        } => match runbook::check_effect(state, *execution, *step, *attempt, target) {
            _ if by != crate::vocab::SYSTEM => {
                Response::refused(Refusal::PermissionDenied, "only the coordinator applies a step's effect")
            }
            Err(refused) => refused,
            Ok(mode) => {
                // Live: the effect is applied to production, on behalf of
                // the operator who started the execution; in a drill, to
                // the drill copy.
                let response = match mode {
                    crate::model::RunMode::Live => {
                        let starter = state.executions.get(execution).map(|e| e.started_by.clone()).unwrap_or_default();
                        let response = dispatch(state, &starter, effect, fx);
                        let action = format!(
                            "{} [runbook execution {execution} step {step} attempt {attempt}]",
                            audit::describe(effect)
                        );
                        audit::record(state, fx.at_unix_ms, &starter, action, audit::outcome(&response));
                        response
                    }
                    crate::model::RunMode::Drill => runbook::drill_effect(state, *execution, effect, fx),
                };
                runbook::record_effect(
                    state,
                    *execution,
                    *step,
                    *attempt,
                    target,
                    effect,
                    *positions_lost,
                    &response,
                    fx,
                );
                response
            }
        },
        Command::StepTransition { execution, step, attempt, change } => {
            runbook::step_transition(state, *execution, *step, *attempt, change, by, fx)
        }
        Command::ControlExecution { execution, step, op } => runbook::control(state, *execution, *step, op, by, fx),
        // Recorded in the trail by `apply`; nothing else changes.
        Command::Audit { .. } => Response::Applied { revision: index },
    };
    // Region states shape routing: a lost, recovering or re-declared
    // region reroutes every service (never refused; see routing/apply.rs).
    if matches!(response, Response::Applied { .. })
        && matches!(
            command,
            Command::ApplyTopology { .. } | Command::DeclareRegionLost { .. } | Command::SetRegionState { .. }
        )
    {
        routing::reroute_forced(state, fx);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KvEntry;

    fn put(key: &str, value: &[u8]) -> Request {
        Request::system(5, Command::Put { key: key.into(), value: value.to_vec() })
    }

    #[test]
    fn put_and_delete_track_revisions() {
        let mut state = State::default();
        assert_eq!(state.apply(3, &put("a", b"1")), Response::Applied { revision: 3 });
        assert_eq!(state.apply(4, &put("a", b"2")), Response::Applied { revision: 4 });
        assert_eq!(state.kv["a"], KvEntry { value: b"2".to_vec(), mod_revision: 4 });
        state.apply(5, &Request::system(6, Command::Delete { key: "a".into() }));
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
        let response = state.apply(7, &Request::system(9, Command::Batch { commands }));
        assert_eq!(response, Response::Batch { responses: vec![Response::Applied { revision: 7 }; 4] });
        assert_eq!(state.kv.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(state.kv["b"], KvEntry { value: b"3".to_vec(), mod_revision: 7 });
        assert_eq!((state.revision, state.last_at_unix_ms), (7, 9));

        // A batch that validation refuses changes nothing but the revision.
        let put = Command::Put { key: "c".into(), value: b"1".to_vec() };
        let note = Command::Note { kind: "k".into(), subject: "s".into(), message: "m".into() };
        let refused = state.apply(8, &Request::system(10, Command::Batch { commands: vec![put, note] }));
        assert!(matches!(refused, Response::Refused { code: Refusal::InvalidArgument, .. }), "{refused:?}");
        assert!(!state.kv.contains_key("c"));
    }

    #[test]
    fn grants_sharing_an_entry_get_distinct_tokens_that_keep_increasing() {
        let mut state = State::default();
        let grant = |key: &str| Command::LeaseGrant { key: key.into(), holder: "h".into(), ttl_ms: 1000 };
        let tokens = |response: &Response| match response {
            Response::Batch { responses } => responses
                .iter()
                .map(|r| match r {
                    Response::Lease { token, .. } => *token,
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(state.apply(3, &Request::by(1, "alice", grant("solo"))), Response::Lease { token: 3, ttl_ms: 1000 });
        let batch = Command::Batch { commands: vec![grant("a"), grant("b"), grant("c")] };
        assert_eq!(tokens(&state.apply(4, &Request::by(1, "alice", batch))), [4, 5, 6]);
        // The next entry's index (5) was taken: its grant gets the token after the last.
        assert_eq!(state.apply(5, &Request::by(1, "alice", grant("d"))), Response::Lease { token: 7, ttl_ms: 1000 });
        // A refused grant in the middle takes no token; the others are applied.
        let batch = Command::Batch { commands: vec![grant("e"), grant("a"), grant("f")] };
        let response = state.apply(9, &Request::by(1, "bob", batch));
        let Response::Batch { responses } = &response else { panic!("{response:?}") };
        assert!(matches!(responses[1], Response::Refused { code: Refusal::FailedPrecondition, .. }), "{response:?}");
        assert_eq!((state.leases["e"].token, state.leases["f"].token, state.last_token), (9, 10, 10));
        assert_eq!(state.apply(30, &Request::by(1, "bob", grant("g"))), Response::Lease { token: 30, ttl_ms: 1000 });
        let mut all: Vec<u64> = state.leases.values().map(|l| l.token).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), state.leases.len(), "a token was handed out twice: {:?}", state.leases);
    }

    #[test]
    fn an_operators_batch_is_audited_command_by_command() {
        let mut state = State::default();
        let grant = |key: &str| Command::LeaseGrant { key: key.into(), holder: "h".into(), ttl_ms: 1000 };
        state.apply(1, &Request::by(1, "alice", Command::Batch { commands: vec![grant("a"), grant("b")] }));
        let revoke = |key: &str| Command::LeaseRevoke { key: key.into(), token: None, reason: RevokeReason::Revoked };
        state.apply(2, &Request::by(2, "bob", Command::Batch { commands: vec![revoke("a"), revoke("zz")] }));
        let trail: Vec<(&str, &str)> = state.audit.iter().map(|e| (e.by.as_str(), e.outcome.as_str())).collect();
        assert_eq!(trail.len(), 2, "{:?}", state.audit);
        assert!(trail.iter().all(|(by, _)| *by == "bob"), "{trail:?}");
        assert!(trail[0].1.starts_with("applied") && trail[1].1.contains("not held"), "{trail:?}");
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

    use crate::model::{Action, Topology};
    use crate::vocab::{primary_lease_key, PromotionMode, RevokeReason, Rule};

    /// The sample topology with orders-0-eu primary under ctl-eu (identity
    /// "ctl-eu"), at revision 3.
    fn fleet() -> State {
        let mut state = State::default();
        let topology: Topology = crate::topology::tests::sample();
        state.apply(1, &Request::by(1, "alice", Command::ApplyTopology { topology }));
        let register = Command::RegisterController {
            id: "ctl-eu".into(),
            region: "eu-west".into(),
            replicas: vec!["orders-0-eu".into()],
        };
        state.apply(2, &Request::by(2, "ctl-eu", register));
        let promote = Command::Promote {
            shard: "orders/0".into(),
            replica: "orders-0-eu".into(),
            expected_epoch: 0,
            mode: PromotionMode::Operator,
            reason: "test".into(),
        };
        state.apply(3, &Request::by(3, "alice", promote));
        state
    }

    #[test]
    fn a_primary_lease_belongs_to_the_controller_identity_and_cannot_be_re_registered_away() {
        let mut state = fleet();
        let key = primary_lease_key("orders/0");
        assert_eq!(state.leases[&key].owner, "ctl-eu");
        assert!(lease::renewable(&state, &key, 3, "ctl-eu"));
        assert!(!lease::renewable(&state, &key, 3, "ctl-eu-2"));
        // Another identity registering the primary replica is refused while the lease is held.
        let steal = Command::RegisterController {
            id: "ctl-eu-2".into(),
            region: "eu-west".into(),
            replicas: vec!["orders-0-eu".into()],
        };
        let refused = state.apply(4, &Request::by(4, "ctl-eu-2", steal.clone()));
        assert!(
            matches!(&refused, Response::Refused { reason, .. } if reason.contains("primary under ctl-eu")),
            "{refused:?}"
        );
        assert_eq!(state.replicas["orders-0-eu"].controller.as_deref(), Some("ctl-eu"));
        // Nor may it acknowledge for the replica.
        let ack = Command::Acknowledge {
            replica: "orders-0-eu".into(),
            epoch: 1,
            role: crate::vocab::ReplicaRole::Primary,
            position: 0,
        };
        let refused = state.apply(5, &Request::by(5, "ctl-eu-2", ack.clone()));
        assert!(matches!(refused, Response::Refused { code: Refusal::PermissionDenied, .. }), "{refused:?}");
        assert!(state.shards["orders/0"].pending.is_some());
        assert_eq!(state.apply(6, &Request::by(6, "ctl-eu", ack)), Response::Applied { revision: 6 });
        // Once the lease expired, the replica may move.
        let expire = Command::LeaseRevoke { key: key.clone(), token: Some(3), reason: RevokeReason::Expired };
        state.apply(7, &Request::system(7, expire));
        assert_eq!(state.apply(8, &Request::by(8, "ctl-eu-2", steal)), Response::Applied { revision: 8 });
    }

    fn ask(state: &mut State, index: u64, by: &str, action: Action) -> Response {
        let request = Command::RequestApproval { action, reason: "test".into(), ttl_ms: 60_000 };
        state.apply(index, &Request::by(1_000 * index, by, request))
    }

    #[test]
    fn a_dangerous_action_runs_only_once_a_second_operator_approves_it_in_time() {
        let mut state = fleet();
        let key = primary_lease_key("orders/0");
        let revoke = Action::Command(Box::new(Command::LeaseRevoke {
            key: key.clone(),
            token: None,
            reason: RevokeReason::Revoked,
        }));
        assert_eq!(ask(&mut state, 10, "alice", revoke), Response::Applied { revision: 10 });
        assert!(!state.leases[&key].revoked, "asking changes nothing");
        let own = state.apply(11, &Request::by(11_000, "alice", Command::Approve { id: 10 }));
        assert!(matches!(own, Response::Refused { code: Refusal::PermissionDenied, .. }), "{own:?}");
        assert_eq!(
            state.apply(12, &Request::by(12_000, "bob", Command::Approve { id: 10 })),
            Response::Applied { revision: 12 }
        );
        assert!(state.leases[&key].revoked, "approved: applied on alice's behalf");
        let decision = state.approvals[&10].decision.clone().expect("decided");
        assert_eq!((decision.by.as_str(), decision.outcome.as_str()), ("bob", "applied at revision 12"));
        let again = state.apply(13, &Request::by(13_000, "carol", Command::Approve { id: 10 }));
        assert!(matches!(again, Response::Refused { code: Refusal::FailedPrecondition, .. }), "{again:?}");
        // An expired request does nothing.
        let set = Command::SetRouting {
            service: "orders".into(),
            weights: [("eu-west".to_string(), 10_000), ("us-east".to_string(), 0)].into(),
            overrides: vec![Rule::MaxStep, Rule::MinServingRegions],
            reason: "test".into(),
        };
        let before = state.routing.clone();
        ask(&mut state, 14, "alice", Action::Command(Box::new(set)));
        let late = state.apply(15, &Request::by(14_000 + 60_001, "bob", Command::Approve { id: 14 }));
        assert!(matches!(&late, Response::Refused { reason, .. } if reason.contains("expired")), "{late:?}");
        assert_eq!(state.routing, before);
        // A membership change is approved here and carried out by the leader.
        ask(&mut state, 16, "alice", Action::RemoveMember { id: 3 });
        assert_eq!(
            state.apply(17, &Request::by(17_000, "bob", Command::Approve { id: 16 })),
            Response::Applied { revision: 17 }
        );
        assert!(state.approvals[&16].decision.as_ref().is_some_and(|d| d.outcome.contains("leader carries it out")));
        // Approvals cannot nest.
        let nested = ask(&mut state, 18, "alice", Action::Command(Box::new(Command::Approve { id: 16 })));
        assert!(matches!(nested, Response::Refused { code: Refusal::InvalidArgument, .. }), "{nested:?}");
    }

    #[test]
    fn every_admin_action_and_refusal_lands_in_a_verifiable_chain() {
        let mut state = fleet();
        ask(&mut state, 10, "alice", Action::RemoveMember { id: 3 });
        state.apply(11, &Request::by(11_000, "alice", Command::Approve { id: 10 }));
        let denied =
            Command::Audit { action: "Kv.Put greeting".into(), outcome: "refused (PermissionDenied): viewer".into() };
        state.apply(12, &Request::by(12_000, "victor", denied));
        // Data-plane writes and the coordinator's own commands are not audited.
        state.apply(13, &Request::by(13_000, "alice", Command::Put { key: "k".into(), value: vec![] }));
        state.apply(
            14,
            &Request::system(14_000, Command::Note { kind: "k".into(), subject: "s".into(), message: "m".into() }),
        );
        let trail: Vec<(&str, &str)> = state.audit.iter().map(|e| (e.by.as_str(), e.outcome.as_str())).collect();
        assert_eq!(trail.len(), 6, "{trail:#?}");
        assert_eq!(trail[1], ("ctl-eu", "applied at revision 2"));
        assert!(trail[4].0 == "alice" && trail[4].1.contains("PermissionDenied"), "{trail:#?}");
        assert!(state.audit[4].action.contains("Approve { id: 10 } of remove node 3 asked for by alice"));
        assert_eq!(trail[5].0, "victor");
        assert!(state.audit[0].action.contains("sha256"), "a topology is recorded by its digest");
        assert_eq!(audit::verify(state.audit_checkpoint, &state.audit), Ok(6));
    }
}
