//! Watches: a server stream of versioned changes that a watcher can resume
//! from a version, without gaps or duplicates.
//!
//! A watch reads the applied state itself, never a per-watcher queue: after
//! each change it sends what is new since the version it last sent. So a slow
//! watcher costs no memory here — it simply reads more at once when it
//! catches up — and one that falls behind the retained event history gets a
//! message with `resync` set (it missed events) and continues from the oldest
//! kept.

use interlock_core::changes::{ChangeJournal, Touched};
use interlock_core::model::Replica;
use interlock_core::state::State;
use interlock_core::vocab::ReplicaRole;
use interlock_core::vocab::{primary_lease_key, shard_key, validate_id};
use interlock_core::InvalidArgument;
use interlock_proto::convert::{lease_info, role_name};
use interlock_proto::v1::{
    Assignment, Event, HookJob, LeaseInfo, ReplicaAssignment, RestoreJob, RoutingTable, WatchResponse,
};
use interlock_store::StateReader;
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::mpsc;
use tonic::Status;

/// Messages buffered per watch stream.
pub const WATCH_BUFFER: usize = 16;
/// Most events in one watch message.
pub const WATCH_EVENTS_PER_MESSAGE: usize = 1000;

/// What a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// The event log.
    Events,
    /// Every lease (the whole list, whenever it changes).
    Leases,
    /// The replicas a controller runs, with roles and epochs.
    Controller(String),
    /// Every service's routing table (all of them, whenever one changes).
    Routing,
}

pub fn parse_topic(topic: &str) -> Result<Topic, InvalidArgument> {
    match topic {
        "events" => Ok(Topic::Events),
        "leases" => Ok(Topic::Leases),
        "routing" => Ok(Topic::Routing),
        other => match other.strip_prefix("controller/") {
            Some(id) => validate_id(id, "topic").map(|_| Topic::Controller(id.to_string())),
            None => Err(InvalidArgument::new(
                "topic",
                format!("{topic:?} is not one of \"events\", \"leases\", \"routing\", \"controller/<id>\""),
            )),
        },
    }
}

/// Most kinds one watch may filter on.
pub const WATCH_KINDS_MAX: usize = 32;

/// What a watcher asked to see of its topic (`key_prefix`, `kinds`): a
/// watcher of a few keys is not woken, and sent nothing, for the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub key_prefix: String,
    pub kinds: Vec<String>,
}

impl Filter {
    /// Checks the filter against its topic; each refusal names its field.
    pub fn parse(topic: &Topic, key_prefix: &str, kinds: &[String]) -> Result<Filter, InvalidArgument> {
        if !key_prefix.is_empty() {
            if matches!(topic, Topic::Controller(_)) {
                return Err(InvalidArgument::new("key_prefix", "a controller's assignment is not filtered"));
            }
            if key_prefix.len() > 256 || key_prefix.chars().any(char::is_control) {
                return Err(InvalidArgument::new(
                    "key_prefix",
                    "at most 256 characters, none of them control characters",
                ));
            }
        }
        if !kinds.is_empty() && *topic != Topic::Events {
            return Err(InvalidArgument::new("kinds", "only the \"events\" topic has kinds"));
        }
        if kinds.len() > WATCH_KINDS_MAX {
            return Err(InvalidArgument::new("kinds", format!("at most {WATCH_KINDS_MAX}, not {}", kinds.len())));
        }
        for (i, kind) in kinds.iter().enumerate() {
            let word = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            let family = kind.strip_suffix('.').unwrap_or(kind);
            if kind.len() > 64 || !family.split('.').all(word) {
                return Err(InvalidArgument::new(
                    format!("kinds[{i}]"),
                    format!("{kind:?} is not an event kind (like \"shard.promoted\", or \"shard.\" for the family)"),
                ));
            }
        }
        Ok(Filter { key_prefix: key_prefix.to_string(), kinds: kinds.to_vec() })
    }

    fn key(&self, key: &str) -> bool {
        key.starts_with(&self.key_prefix)
    }

    fn event(&self, kind: &str, subject: &str) -> bool {
        self.key(subject) && interlock_core::vocab::kind_selected(&self.kinds, kind)
    }
}

/// The assignment of replica `r` (run by a controller) in `state`.
fn replica_assignment(state: &State, r: &Replica) -> ReplicaAssignment {
    let key = shard_key(&r.service, &r.shard);
    let (epoch, primary) = state.shards.get(&key).map_or((0, None), |s| (s.epoch, s.primary.clone()));
    let lease_key = primary_lease_key(&key);
    let lease = state.leases.get(&lease_key).filter(|l| l.holder == r.id);
    ReplicaAssignment {
        replica_id: r.id.clone(),
        service: r.service.clone(),
        shard: r.shard.clone(),
        role: role_name(r.role).to_string(),
        epoch,
        primary_lease_key: lease_key,
        lease_token: if r.role == ReplicaRole::Primary { lease.map_or(0, |l| l.token) } else { 0 },
        acknowledged: r.acked == Some((r.role, epoch)),
        lease_ttl_ms: state.topology.failover.primary_lease_ttl_ms,
        primary: primary.unwrap_or_default(),
        primary_address: state.primary_address(&key),
    }
}

/// The replicas controller `id` runs in `state`.
fn replicas_of<'a>(state: &'a State, id: &str) -> impl Iterator<Item = &'a Replica> + 'a {
    state.controllers.get(id).into_iter().flat_map(|c| c.replicas.iter()).filter_map(|r| state.replicas.get(r))
}

/// The whole assignment of controller `id` in `state`.
pub fn assignment(state: &State, id: &str) -> Assignment {
    Assignment {
        controller_id: id.to_string(),
        replicas: replicas_of(state, id).map(|r| replica_assignment(state, r)).collect(),
        restore_jobs: interlock_proto::convert::restore_jobs(state, id),
        hook_jobs: interlock_proto::convert::hook_jobs(state, id),
        partial: false,
        removed: Vec::new(),
    }
}

/// What a controller's watch last sent: each replica's assignment, and the
/// jobs. After the first (full) message it sends only what differs, looking
/// only at the shards the applied entries since touched.
struct SentAssignment {
    /// The revision the last message was computed at.
    through: u64,
    replicas: BTreeMap<String, ReplicaAssignment>,
    restore_jobs: Vec<RestoreJob>,
    hook_jobs: Vec<HookJob>,
}

impl SentAssignment {
    /// What the first message of a watch, the `full` assignment at
    /// revision `through`, sent.
    fn of(full: &Assignment, through: u64) -> SentAssignment {
        SentAssignment {
            through,
            replicas: full.replicas.iter().map(|r| (r.replica_id.clone(), r.clone())).collect(),
            restore_jobs: full.restore_jobs.clone(),
            hook_jobs: full.hook_jobs.clone(),
        }
    }

    /// The message that brings the watcher from what it was sent to
    /// `state`, looking at what `changes` says changed since (None: nothing
    /// did).
    fn next(&mut self, state: &State, changes: &ChangeJournal, id: &str) -> Option<Assignment> {
        let touched = &changes.since(self.through);
        self.through = state.revision;
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let mut look_at = |r: &Replica, replicas: &mut BTreeMap<String, ReplicaAssignment>| {
            let now = replica_assignment(state, r);
            if replicas.get(&r.id) != Some(&now) {
                replicas.insert(r.id.clone(), now.clone());
                changed.push(now);
            }
        };
        match touched {
            // Which replicas the controller runs changes only here (a
            // registration, a topology): the others keep the set last sent.
            Touched::All => {
                let assigned: BTreeSet<&str> = replicas_of(state, id).map(|r| r.id.as_str()).collect();
                removed = self.replicas.keys().filter(|r| !assigned.contains(r.as_str())).cloned().collect();
                for r in &removed {
                    self.replicas.remove(r);
                }
                for r in replicas_of(state, id) {
                    look_at(r, &mut self.replicas);
                }
            }
            Touched::Shards(keys) => {
                let replicas = keys.iter().filter_map(|k| state.shards.get(k)).flat_map(|s| s.replicas.iter());
                for r in replicas.filter_map(|r| state.replicas.get(r)) {
                    if self.replicas.contains_key(&r.id) {
                        look_at(r, &mut self.replicas);
                    }
                }
            }
        }
        // Restore and hook jobs change only with commands that touch
        // everything (`Touched` names no shard for them).
        let mut jobs_changed = false;
        if *touched == Touched::All {
            let restore_jobs = interlock_proto::convert::restore_jobs(state, id);
            let hook_jobs = interlock_proto::convert::hook_jobs(state, id);
            jobs_changed = restore_jobs != self.restore_jobs || hook_jobs != self.hook_jobs;
            (self.restore_jobs, self.hook_jobs) = (restore_jobs, hook_jobs);
        }
        if changed.is_empty() && removed.is_empty() && !jobs_changed {
            return None;
        }
        Some(Assignment {
            controller_id: id.to_string(),
            replicas: changed,
            restore_jobs: self.restore_jobs.clone(),
            hook_jobs: self.hook_jobs.clone(),
            partial: true,
            removed,
        })
    }
}

/// Where a watch is: what it sent last.
#[derive(Default)]
struct Cursor {
    /// Events: the version of the last event sent.
    after: u64,
    /// Level topics: the last value sent (None before the first message).
    last_assignment: Option<SentAssignment>,
    last_leases: Option<Vec<LeaseInfo>>,
    /// Routing: the (service, version) pairs last sent.
    last_routing: Option<Vec<(String, u64)>>,
}

/// The next message for `topic`, or None if nothing new.
fn next_message(
    state: &State,
    changes: &ChangeJournal,
    topic: &Topic,
    filter: &Filter,
    cursor: &mut Cursor,
    remaining_ms: &impl Fn(&str, u64) -> u64,
) -> Option<WatchResponse> {
    match topic {
        Topic::Events => {
            let resync = cursor.after < state.events_evicted_through;
            let mut events: Vec<Event> = Vec::new();
            // Read through: the last version looked at, sent or filtered out.
            let mut through = cursor.after.max(state.events_evicted_through);
            for e in state.events_after(cursor.after) {
                // Never split one version's events across messages.
                if events.len() >= WATCH_EVENTS_PER_MESSAGE && events.last().is_some_and(|l| l.version != e.version) {
                    break;
                }
                through = e.version;
                if filter.event(&e.kind, &e.subject) {
                    events.push(e.into());
                }
            }
            cursor.after = through;
            if events.is_empty() && !resync {
                return None;
            }
            Some(WatchResponse { version: cursor.after, resync, events, ..WatchResponse::default() })
        }
        Topic::Controller(id) => {
            let assignment = match cursor.last_assignment.as_mut() {
                None => {
                    let full = assignment(state, id);
                    cursor.last_assignment = Some(SentAssignment::of(&full, state.revision));
                    full
                }
                Some(sent) => sent.next(state, changes, id)?,
            };
            Some(WatchResponse { version: state.revision, assignment: Some(assignment), ..WatchResponse::default() })
        }
        Topic::Leases => {
            // Compare without the remaining time, which changes constantly.
            let current: Vec<LeaseInfo> = state
                .leases
                .range(filter.key_prefix.clone()..)
                .take_while(|(k, _)| filter.key(k))
                .map(|(_, l)| lease_info(l, 0))
                .collect();
            if cursor.last_leases.as_ref() == Some(&current) {
                return None;
            }
            cursor.last_leases = Some(current.clone());
            let leases =
                current.into_iter().map(|l| LeaseInfo { remaining_ms: remaining_ms(&l.key, l.ttl_ms), ..l }).collect();
            Some(WatchResponse { version: state.revision, leases, ..WatchResponse::default() })
        }
        Topic::Routing => {
            let tables = || state.routing.values().filter(|r| filter.key(&r.service));
            let versions: Vec<(String, u64)> = tables().map(|r| (r.service.clone(), r.version)).collect();
            if cursor.last_routing.as_ref() == Some(&versions) {
                return None;
            }
            cursor.last_routing = Some(versions);
            let routing = tables().map(routing_table).collect();
            Some(WatchResponse { version: state.revision, routing, ..WatchResponse::default() })
        }
    }
}

/// A routing table on the wire.
pub fn routing_table(r: &interlock_core::model::Routing) -> RoutingTable {
    RoutingTable {
        service: r.service.clone(),
        version: r.version,
        weights: r.effective.clone().into_iter().collect(),
        base: r.base.clone().into_iter().collect(),
        updated_at_unix_ms: r.updated_at_unix_ms,
    }
}

/// Feeds one watch stream until the watcher goes away.
pub async fn run_watch(
    state: StateReader,
    topic: Topic,
    filter: Filter,
    after_version: u64,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    remaining_ms: impl Fn(&str, u64) -> u64 + Send + 'static,
) {
    let mut changes = state.subscribe();
    let mut cursor = Cursor { after: after_version, ..Cursor::default() };
    loop {
        let message = {
            let applied = state.read();
            next_message(&applied.state, &applied.changes, &topic, &filter, &mut cursor, &remaining_ms)
        };
        match message {
            // More may be pending (a capped batch): look again before waiting.
            Some(m) => {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            None => {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interlock_core::{Command, Request};

    fn grant(state: &mut State, index: u64, key: &str) {
        let command = Command::LeaseGrant { key: key.into(), holder: "h".into(), ttl_ms: 1000 };
        state.apply(index, &Request::system(0, command));
    }

    #[test]
    fn events_resume_after_a_version_without_gaps_or_duplicates() {
        let mut state = State::default();
        for i in 1..=5 {
            grant(&mut state, i, &format!("k{i}"));
        }
        let none = |_: &str, ttl: u64| ttl;
        let mut cursor = Cursor { after: 2, ..Cursor::default() };
        let first =
            next_message(&state, &ChangeJournal::default(), &Topic::Events, &Filter::default(), &mut cursor, &none)
                .expect("events");
        assert_eq!(first.events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(!first.resync);
        assert_eq!(
            next_message(&state, &ChangeJournal::default(), &Topic::Events, &Filter::default(), &mut cursor, &none),
            None,
            "nothing twice"
        );
        grant(&mut state, 6, "k6");
        let next =
            next_message(&state, &ChangeJournal::default(), &Topic::Events, &Filter::default(), &mut cursor, &none)
                .expect("new event");
        assert_eq!(next.events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![6]);
    }

    #[test]
    fn a_watcher_behind_the_kept_history_gets_a_resync() {
        let mut state = State::default();
        for i in 1..=(interlock_core::state::EVENTS_KEPT as u64 + 10) {
            grant(&mut state, i, &format!("k{i}"));
        }
        let mut cursor = Cursor { after: 3, ..Cursor::default() };
        let message = next_message(
            &state,
            &ChangeJournal::default(),
            &Topic::Events,
            &Filter::default(),
            &mut cursor,
            &|_: &str, t: u64| t,
        )
        .expect("message");
        assert!(message.resync);
        assert_eq!(message.events.first().map(|e| e.version), Some(11));
        assert_eq!(message.events.len(), WATCH_EVENTS_PER_MESSAGE);
    }

    #[test]
    fn a_filtered_watch_sends_only_what_it_asked_for_and_moves_past_the_rest() {
        let mut state = State::default();
        for (i, key) in ["lock/a", "bench/1", "lock/b", "bench/2"].iter().enumerate() {
            grant(&mut state, i as u64 + 1, key);
        }
        let kind = state.events_after(0).next().map(|e| e.kind.clone()).expect("a grant leaves an event");
        let none = |_: &str, ttl: u64| ttl;
        let filter = Filter::parse(&Topic::Events, "lock/", std::slice::from_ref(&kind)).expect("valid");
        let mut cursor = Cursor::default();
        let message = next_message(&state, &ChangeJournal::default(), &Topic::Events, &filter, &mut cursor, &none)
            .expect("events");
        let subjects: Vec<&str> = message.events.iter().map(|e| e.subject.as_str()).collect();
        assert_eq!(subjects, ["lock/a", "lock/b"]);
        // Events it does not want move the cursor on, and send nothing.
        grant(&mut state, 5, "bench/3");
        assert_eq!(next_message(&state, &ChangeJournal::default(), &Topic::Events, &filter, &mut cursor, &none), None);
        assert_eq!(cursor.after, 5);
        // A family of kinds, and a kind it does not want.
        let family = format!("{}.", kind.split('.').next().unwrap_or_default());
        let mut cursor = Cursor::default();
        let all = Filter::parse(&Topic::Events, "", &[family]).expect("valid");
        assert_eq!(
            next_message(&state, &ChangeJournal::default(), &Topic::Events, &all, &mut cursor, &none)
                .map(|m| m.events.len()),
            Some(5)
        );
        let other = Filter::parse(&Topic::Events, "", &["region.lost".to_string()]).expect("valid");
        let mut cursor = Cursor::default();
        assert_eq!(next_message(&state, &ChangeJournal::default(), &Topic::Events, &other, &mut cursor, &none), None);
        // Leases by key prefix.
        let leases = Filter::parse(&Topic::Leases, "lock/", &[]).expect("valid");
        let mut cursor = Cursor::default();
        let message = next_message(&state, &ChangeJournal::default(), &Topic::Leases, &leases, &mut cursor, &none)
            .expect("leases");
        assert_eq!(message.leases.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(), ["lock/a", "lock/b"]);
        grant(&mut state, 6, "bench/4");
        assert_eq!(
            next_message(&state, &ChangeJournal::default(), &Topic::Leases, &leases, &mut cursor, &none),
            None,
            "not its keys"
        );
    }

    /// Applies `command` at `index` and records what it touched, as the
    /// store does.
    fn apply(state: &mut State, changes: &mut ChangeJournal, index: u64, command: Command) {
        let request = Request::system(0, command);
        state.apply(index, &request);
        changes.record(index, state.touched_by(&request.command));
    }

    #[test]
    fn a_controllers_watch_sends_its_assignment_once_then_only_what_changed() {
        let (mut state, mut changes) = (State::default(), ChangeJournal::default());
        let replica = |i: usize, region: &str| serde_json::json!({"id": format!("s{i}-{region}"), "region": region});
        let shards: Vec<serde_json::Value> = (0..3)
            .map(|i| serde_json::json!({"id": i.to_string(), "replicas": [replica(i, "eu"), replica(i, "us")]}))
            .collect();
        let topology = serde_json::from_value(serde_json::json!({
            "regions": [{"id": "eu"}, {"id": "us"}],
            "services": [{"name": "db", "shards": shards}],
        }))
        .expect("topology");
        apply(&mut state, &mut changes, 1, Command::ApplyTopology { topology });
        let register = |replicas: &[&str]| Command::RegisterController {
            id: "ctl-eu".into(),
            region: "eu".into(),
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
        };
        apply(&mut state, &mut changes, 2, register(&["s0-eu", "s1-eu", "s2-eu"]));
        let topic = Topic::Controller("ctl-eu".into());
        let none = |_: &str, ttl: u64| ttl;
        let mut cursor = Cursor::default();
        let mut next = |state: &State, changes: &ChangeJournal| {
            next_message(state, changes, &topic, &Filter::default(), &mut cursor, &none).and_then(|m| m.assignment)
        };
        let ids = |a: &Assignment| a.replicas.iter().map(|r| r.replica_id.clone()).collect::<Vec<_>>();
        let first = next(&state, &changes).expect("the first message");
        assert!(!first.partial);
        assert_eq!(ids(&first), ["s0-eu", "s1-eu", "s2-eu"]);
        assert_eq!(next(&state, &changes), None, "nothing changed");

        // A promotion touches one shard: only its replica is sent.
        let promote = |shard: &str, replica: &str| Command::Promote {
            shard: shard.into(),
            replica: replica.into(),
            expected_epoch: 0,
            mode: interlock_core::vocab::PromotionMode::Operator,
            reason: "test".into(),
        };
        apply(&mut state, &mut changes, 3, promote("db/1", "s1-eu"));
        let delta = next(&state, &changes).expect("the promotion");
        assert!(delta.partial);
        assert_eq!(ids(&delta), ["s1-eu"]);
        assert_eq!((delta.replicas[0].role.as_str(), delta.replicas[0].epoch), ("PRIMARY", 1));
        // A key-value write sends nothing; another region's promotion sends
        // the standby of that shard (its new epoch and primary).
        apply(&mut state, &mut changes, 4, promote("db/2", "s2-us"));
        apply(&mut state, &mut changes, 5, Command::Put { key: "k".into(), value: vec![] });
        let other = next(&state, &changes).expect("s2-eu follows s2-us now");
        assert_eq!(ids(&other), ["s2-eu"]);
        assert_eq!(next(&state, &changes), None);
        // Fewer replicas registered: the dropped one is named as removed.
        apply(&mut state, &mut changes, 6, register(&["s0-eu", "s1-eu"]));
        let smaller = next(&state, &changes).expect("the registration");
        assert_eq!((ids(&smaller), smaller.removed), (vec![], vec!["s2-eu".to_string()]));
        // A journal that forgot (a snapshot installed) looks at everything again.
        apply(&mut state, &mut changes, 7, promote("db/0", "s0-us"));
        let forgot = ChangeJournal::starting_at(7);
        let after_snapshot = next(&state, &forgot).expect("the promotion, found by looking at all");
        assert_eq!(ids(&after_snapshot), ["s0-eu"]);
    }

    #[test]
    fn a_bad_filter_is_refused_by_field() {
        let field = |topic: Topic, prefix: &str, kinds: &[&str]| {
            let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
            Filter::parse(&topic, prefix, &kinds).err().map(|e| e.field)
        };
        assert_eq!(field(Topic::Events, "orders/", &["shard.promoted", "region."]), None);
        assert_eq!(field(Topic::Controller("c".into()), "x", &[]), Some("key_prefix".into()));
        assert_eq!(field(Topic::Leases, "lock/", &["shard.promoted"]), Some("kinds".into()));
        assert_eq!(field(Topic::Events, "", &["shard.promoted", "Shard Promoted"]), Some("kinds[1]".into()));
        assert_eq!(field(Topic::Events, "", &["shard..x"]), Some("kinds[0]".into()));
        assert_eq!(field(Topic::Events, "a\nb", &[]), Some("key_prefix".into()));
        assert_eq!(field(Topic::Events, "", &["a"; WATCH_KINDS_MAX + 1]), Some("kinds".into()));
    }

    #[test]
    fn topics_are_validated() {
        assert_eq!(parse_topic("events"), Ok(Topic::Events));
        assert_eq!(parse_topic("controller/ctl-eu"), Ok(Topic::Controller("ctl-eu".into())));
        assert_eq!(parse_topic("routing"), Ok(Topic::Routing));
        assert_eq!(parse_topic("routes").map_err(|e| e.field), Err("topic".to_string()));
        assert!(parse_topic("controller/").is_err());
    }
}
