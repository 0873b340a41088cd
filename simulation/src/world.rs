//! One simulated deployment: three regions, a coordinator node and a lease
//! holder (a controller stand-in built on the real SDK) in each, a writer
//! client, a fenced store, a latency matrix, per-host clock drift, and a
//! schedule of faults. Everything is decided by the seed.

use crate::clock::{true_ms, SimClock};
use crate::controllers;
use crate::faults::{plan, Fault, Scheduled};
use crate::history::{Belief, Shared};
use crate::net::{self, GRPC_PORT};
use interlock_agent::drivers::demo::DemoDatabase;
use interlock_client::{Client, ClientOptions, ControllerMutations, LeaseKeeper, LeaseOptions, LeaseState};
use interlock_core::lease::DEFAULT_DRIFT;
use interlock_core::NodeInfo;
use interlock_server::api::auth::{Auth, Roles};
use interlock_server::control::leases::LeaseMutations;
use interlock_server::http::metrics::Metrics;
use interlock_server::node::config::TimingPreset;
use interlock_server::node::{Assembly, Node};
use interlock_server::raft::channels::Channels;
use interlock_store::{MemLogStore, NoObserver, SnapshotVault, StateMachineStore};
use interlock_tls::dev::Authority;
use interlock_tls::Tls;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Regions of the simulated deployment, one coordinator and one holder each.
pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];
/// One-way latency between regions (ms): eu-us, eu-ap, us-ap.
pub const CROSS_REGION_MS: [(usize, usize, u64); 3] = [(0, 1, 15), (0, 2, 40), (1, 2, 75)];
/// The lease the holders contend for (an application lock; shard primary
/// leases are the controllers').
pub const LEASE_KEY: &str = "lock/orders";
/// Its TTL is one of these, chosen by the seed: long TTLs widen the window in
/// which a clock-drift bug shows (drift is a fraction of the TTL).
pub const LEASE_TTLS_S: [u64; 4] = [3, 5, 10, 20];
/// Clock rates are within ±1%; most hosts sit at a bound, where drift bugs
/// are most visible.
pub const DRIFT_MAX: f64 = 0.01;
/// Faults happen in [FAULTS_FROM_MS, FAULTS_UNTIL_MS); then everything heals.
pub const FAULTS_FROM_MS: u64 = 8_000;
pub const FAULTS_UNTIL_MS: u64 = 68_000;
/// After healing, a leader, a write and a lease holder within this bound.
pub const LIVENESS_BOUND_MS: u64 = 20_000;
/// The run ends this long after healing.
pub const RUN_AFTER_HEAL_MS: u64 = 25_000;

/// A deliberate bug, to prove the checkers can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The leader answers keepalives without confirming leadership.
    SkipKeepaliveConfirmation,
    /// A new leader does not give leases election time + TTL.
    NoResetOnNewTerm,
    /// Holders compute their deadline without the drift term.
    HolderNoDrift,
    /// Regions are declared lost on the leader's suspicion alone
    /// (`failover.witness_quorum: 0`).
    NoWitnesses,
    /// An operator's revoke of a primary lease frees the key at once (the
    /// hole of Jepsen's etcd lock finding): a cut-off primary still acts.
    RevokeFreesAtOnce,
    /// A region controller takes a failed demote for a done one: it neither
    /// fences nor holds back its acknowledgement, so a database that would
    /// not stop keeps acting beside the next primary.
    TrustFailedDemote,
    /// A region controller gives up a dead primary's lease without fencing
    /// it: when the database restarts it is a primary again, beside the one
    /// promoted in its place.
    GiveUpUnfenced,
    /// A new leader re-runs every effect of the runbook executions still
    /// running (a run's progress kept in the leader's memory): a step's
    /// effect happens twice.
    RerunRunbookEffects,
    /// Every grant and promotion in a log entry takes the entry's index as
    /// its token (as before entries were shared): promotions applied
    /// together hold one token.
    SharedEntryToken,
}

impl Mutation {
    pub const ALL: [Mutation; 9] = [
        Mutation::SkipKeepaliveConfirmation,
        Mutation::NoResetOnNewTerm,
        Mutation::HolderNoDrift,
        Mutation::NoWitnesses,
        Mutation::RevokeFreesAtOnce,
        Mutation::TrustFailedDemote,
        Mutation::GiveUpUnfenced,
        Mutation::RerunRunbookEffects,
        Mutation::SharedEntryToken,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutation::SkipKeepaliveConfirmation => "skip-keepalive-confirmation",
            Mutation::NoResetOnNewTerm => "no-reset-on-new-term",
            Mutation::HolderNoDrift => "holder-no-drift",
            Mutation::NoWitnesses => "no-witnesses",
            Mutation::RevokeFreesAtOnce => "revoke-frees-at-once",
            Mutation::TrustFailedDemote => "trust-failed-demote",
            Mutation::GiveUpUnfenced => "give-up-unfenced",
            Mutation::RerunRunbookEffects => "rerun-runbook-effects",
            Mutation::SharedEntryToken => "shared-entry-token",
        }
    }

    pub fn parse(name: &str) -> Option<Mutation> {
        Mutation::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub mutation: Option<Mutation>,
    /// Overrides the lease TTL drawn from the seed (the draw still happens,
    /// so the rest of the run's randomness is unchanged).
    pub lease_ttl_s: Option<u64>,
    /// A lossy WAN ([`LOSSY_JITTER_MS`], [`STALLS_PER_S`]) under the faults.
    pub lossy: bool,
}

/// On a lossy WAN, a cross-region message takes its link's latency ± this
/// (at least 1 ms).
pub const LOSSY_JITTER_MS: u64 = 50;
/// On a lossy WAN, how often each cross-region host pair loses a segment,
/// per second. Turmoil's TCP never loses a byte, so a loss is modelled as
/// what TCP makes of it: the stream stalls until the retransmission, for
/// [`STALL_MS`]. 2% of the ~15 segments a second that heartbeats, Raft and
/// keepalives put on a pair is 0.3.
pub const STALLS_PER_S: f64 = 0.3;
/// A retransmission timeout: Linux's minimum RTO is 200 ms, doubled once
/// when the retransmission is lost too.
pub const STALL_MS: std::ops::RangeInclusive<u64> = 200..=400;

/// The outcome of one seed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub seed: u64,
    /// For each region cut off while it held primaries: ms until every one
    /// of those shards had a primary acting elsewhere (None: the region came
    /// back first).
    #[serde(default)]
    pub failovers: Vec<Option<u64>>,
    /// For each of `failovers`: whether the region held the Raft leader.
    #[serde(default)]
    pub failovers_leader_lost: Vec<bool>,
    /// The same for each database that died under a primary while its
    /// region lived (None: it restarted first).
    #[serde(default)]
    pub dead_primary_failovers: Vec<Option<u64>>,
    /// Region-loss declarations seen.
    #[serde(default)]
    pub lost_declared: usize,
    pub violations: Vec<String>,
    pub digest: u64,
    pub terms: usize,
    pub lease_handovers: usize,
    pub acked_writes: usize,
    pub faults: Vec<String>,
    pub simulated_ms: u64,
    /// The run's trace (what the digest is computed over).
    pub trace: Vec<String>,
}

/// A clock rate within ±[`DRIFT_MAX`]: at either bound 40% of the time each.
fn clock_rate(rng: &mut impl Rng) -> f64 {
    match rng.gen_range(0..5) {
        0 | 1 => 1.0 - DRIFT_MAX,
        2 | 3 => 1.0 + DRIFT_MAX,
        _ => 1.0 + rng.gen_range(-DRIFT_MAX..=DRIFT_MAX),
    }
}

fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn holder_name(i: usize) -> String {
    format!("h-{}", REGIONS[i])
}

/// The in-memory "disk" of a coordinator: survives crashes and restarts.
#[derive(Clone)]
struct Disk {
    log: MemLogStore,
    vault: SnapshotVault,
}

/// Runs one seed to the end and checks every invariant.
pub fn run(config: &RunConfig) -> Report {
    interlock_store::runtime::seed_thread_rng(config.seed);
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let end_ms = FAULTS_UNTIL_MS + RUN_AFTER_HEAL_MS;
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_millis(end_ms + 60_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(2))
        .tcp_capacity(1 << 16)
        .rng_seed(config.seed)
        .build();
    let shared = Shared::default();
    let drawn = LEASE_TTLS_S[rng.gen_range(0..LEASE_TTLS_S.len())];
    let lease_ttl = Duration::from_secs(config.lease_ttl_s.unwrap_or(drawn));
    shared.lock().note(0, format!("lease ttl {lease_ttl:?}"));

    let mutations = LeaseMutations {
        skip_keepalive_confirmation: config.mutation == Some(Mutation::SkipKeepaliveConfirmation),
        no_reset_on_new_term: config.mutation == Some(Mutation::NoResetOnNewTerm),
        revoke_frees_at_once: config.mutation == Some(Mutation::RevokeFreesAtOnce),
        rerun_runbook_effects: config.mutation == Some(Mutation::RerunRunbookEffects),
    };
    // The state machine's mutation is per thread, and the whole run is on this one.
    interlock_core::lease::mutate_shared_entry_token(config.mutation == Some(Mutation::SharedEntryToken));
    let pki = Arc::new(Pki::new());
    let peers: BTreeMap<u64, NodeInfo> = (0..REGIONS.len())
        .map(|i| {
            let info = NodeInfo { grpc_addr: format!("{}:{GRPC_PORT}", node_name(i)), region: REGIONS[i].to_string() };
            (i as u64 + 1, info)
        })
        .collect();
    let endpoints: Vec<String> = peers.values().map(|n| n.grpc_addr.clone()).collect();

    for i in 0..REGIONS.len() {
        let disk = Disk { log: MemLogStore::new(), vault: SnapshotVault::memory() };
        let clock = SimClock { rate: clock_rate(&mut rng), offset_ms: rng.gen_range(-5_000..=5_000) };
        let (peers, shared, pki) = (peers.clone(), shared.clone(), pki.clone());
        shared.lock().note(0, format!("{} clock rate {:.4}", node_name(i), clock.rate));
        sim.host(node_name(i), move || {
            let (disk, peers, shared, pki) = (disk.clone(), peers.clone(), shared.clone(), pki.clone());
            coordinator(i as u64 + 1, disk, peers, clock, mutations, shared, pki)
        });
    }
    for i in 0..REGIONS.len() {
        let rate = clock_rate(&mut rng);
        let drift = if config.mutation == Some(Mutation::HolderNoDrift) { 0.0 } else { DEFAULT_DRIFT };
        let options = LeaseOptions { drift, clock_rate: rate, ..LeaseOptions::default() };
        let (endpoints, shared) = (endpoints.clone(), shared.clone());
        let backoff_seed: u64 = rng.gen();
        shared.lock().note(0, format!("{} clock rate {rate:.4}", holder_name(i)));
        let tls = pki.tls(&holder_name(i));
        sim.host(holder_name(i), move || {
            let (endpoints, tls) = (endpoints.clone(), tls.clone());
            let (options, shared) = (options.clone(), shared.clone());
            async move {
                let client = client(&endpoints, &tls)?;
                holder(holder_name(i), client, options, lease_ttl, backoff_seed, shared).await
            }
        });
    }
    let store = interlock_agent::drivers::backups::BackupStore::memory();
    let dbs: Vec<Arc<DemoDatabase>> =
        (0..REGIONS.len()).map(|r| controllers::database(r, shared.clone(), store.clone())).collect();
    // In half the seeds one region's restore tests all fail (a store it
    // cannot read): its tests are retried in the third region. Chosen from
    // the seed, not the run's generator, so that the rest of a seed's run
    // (its faults, its clocks) is what it was before backups existed.
    if let Some(r) = Some((config.seed % 6) as usize).filter(|r| *r < REGIONS.len()) {
        dbs[r].fail_restores(true);
        shared.lock().note(0, format!("the restore tests of {} fail", REGIONS[r]));
    }
    // In half the seeds one region's database refuses graceful demotes all
    // run long, as one that hangs on a clean shutdown would: only a fence
    // stops it, at every switchover and every lost lease there.
    if let Some(r) = rng.gen_bool(0.5).then(|| rng.gen_range(0..REGIONS.len())) {
        dbs[r].refuse_demotes(true);
        shared.lock().note(0, format!("the database of {} refuses graceful demotes", REGIONS[r]));
    }
    let controller_mutations = ControllerMutations {
        trust_failed_demote: config.mutation == Some(Mutation::TrustFailedDemote),
        give_up_unfenced: config.mutation == Some(Mutation::GiveUpUnfenced),
    };
    for (r, db) in dbs.iter().enumerate() {
        let (endpoints, db) = (endpoints.clone(), db.clone());
        let tls = pki.tls(&controllers::controller_name(r));
        sim.host(controllers::controller_name(r), move || {
            let (endpoints, tls, db) = (endpoints.clone(), tls.clone(), db.clone());
            async move { controllers::controller(r, client(&endpoints, &tls)?, db, controller_mutations).await }
        });
    }
    {
        let (endpoints, shared) = (endpoints.clone(), shared.clone());
        let topology = controllers::topology(config.mutation == Some(Mutation::NoWitnesses));
        let tls = pki.tls("writer");
        sim.client("writer", async move { writer(client(&endpoints, &tls)?, shared, topology).await });
    }
    {
        let (endpoints, shared) = (endpoints.clone(), shared.clone());
        let tls = pki.tls("observer");
        sim.client(
            "observer",
            async move { controllers::observe_events(client(&endpoints, &tls)?, shared, end_ms).await },
        );
    }
    {
        let (endpoints, shared, seed) = (endpoints.clone(), shared.clone(), rng.gen::<u64>());
        // Two operators: the second approves what the first asks for.
        let tls = (pki.tls(OPERATORS[0]), pki.tls(OPERATORS[1]));
        sim.client("operator", async move {
            let operators = (client(&endpoints, &tls.0)?, client(&endpoints, &tls.1)?);
            controllers::operator(operators, shared, seed, FAULTS_FROM_MS + 2_000, FAULTS_UNTIL_MS).await
        });
    }
    {
        // Runbooks (a drill and a live run, back to back) through the faults;
        // the region is chosen from the seed, not drawn from the run's generator.
        let (endpoints, shared, seed) = (endpoints.clone(), shared.clone(), config.seed);
        let tls = pki.tls(OPERATORS[0]);
        sim.client("runbooks", async move {
            let client = client(&endpoints, &tls)?;
            let (from, live_until) = (FAULTS_FROM_MS + 1_000, FAULTS_UNTIL_MS - 10_000);
            crate::runbooks::operator(client, shared, seed, from, live_until, end_ms - 4_000).await
        });
    }

    // Latencies: cross-region links per the matrix, with jitter (a lossy
    // WAN's is ±LOSSY_JITTER_MS, spread by an Exp(2) curve: mean near the
    // link's latency, one message in seven at the upper bound).
    let jitter = |ms: u64| if config.lossy { (LOSSY_JITTER_MS, LOSSY_JITTER_MS) } else { (0, ms / 5) };
    if config.lossy {
        sim.set_message_latency_curve(2.0);
    }
    for (a, b, ms) in CROSS_REGION_MS {
        let (below, above) = jitter(ms);
        for x in region_hosts(a) {
            for y in region_hosts(b) {
                sim.set_link_latency(x.as_str(), y.as_str(), Duration::from_millis(ms.saturating_sub(below).max(1)));
                sim.set_link_max_message_latency(x.as_str(), y.as_str(), Duration::from_millis(ms + above));
            }
        }
        sim.set_link_latency("writer", node_name(b).as_str(), Duration::from_millis(if a == 0 { ms } else { 1 }));
    }

    let schedule = plan(&mut rng, FAULTS_FROM_MS, FAULTS_UNTIL_MS, lease_ttl.as_millis() as u64);
    let fault_lines: Vec<String> = schedule.iter().map(|s| s.to_string()).collect();
    let loss = config.lossy.then(|| Loss::new(config.seed));
    drive(&mut sim, &schedule, &shared, &dbs, end_ms, loss);

    let history = shared.take();
    let mut violations = crate::invariants::check_all(&history, LIVENESS_BOUND_MS);
    let failovers = crate::invariants::failover_times(&history.cuts, &history.acting);
    let failovers_leader_lost =
        history.cuts.iter().filter(|c| !c.primaries.is_empty()).map(|c| c.held_leader).collect();
    let dead_primary_failovers = crate::invariants::failover_times(&history.db_downs, &history.acting);
    let applied: Vec<(String, BTreeMap<String, u64>)> = dbs
        .iter()
        .enumerate()
        .map(|(r, db)| (controllers::controller_name(r), db.routing().into_iter().map(|(s, (v, _))| (s, v)).collect()))
        .collect();
    violations.extend(crate::invariants::routing_converged(&history, &applied));
    if let Some(error) = history.trace.iter().find(|l| l.contains("HOST ERROR")) {
        violations.push(error.clone());
    }
    Report {
        seed: config.seed,
        failovers,
        failovers_leader_lost,
        dead_primary_failovers,
        lost_declared: history.lost_declared.len(),
        digest: history.digest(),
        terms: history.leaders_by_term.len(),
        lease_handovers: history.beliefs.len(),
        acked_writes: history.acked_writes.len(),
        faults: fault_lines,
        simulated_ms: end_ms,
        trace: history.trace.clone(),
        violations,
    }
}

/// The stalls of a lossy WAN: each cross-region host pair stalls at random
/// ([`STALLS_PER_S`], for [`STALL_MS`]), unless a fault holds the link.
struct Loss {
    rng: StdRng,
    /// Host pairs, each in [`Faulted::pair`]'s order.
    pairs: Vec<(String, String)>,
    /// Index in `pairs` -> when its stall ends.
    stalled: BTreeMap<usize, u64>,
}

impl Loss {
    fn new(seed: u64) -> Loss {
        let pairs = CROSS_REGION_MS
            .iter()
            .flat_map(|(a, b, _)| {
                region_hosts(*a)
                    .into_iter()
                    .flat_map(move |x| region_hosts(*b).into_iter().map(move |y| Faulted::pair(&x, &y)))
            })
            .collect();
        Loss { rng: StdRng::seed_from_u64(seed ^ 0x105E_105E), pairs, stalled: BTreeMap::new() }
    }

    /// One millisecond: stalls end and begin. A pair a fault has cut or
    /// held (`faulted`) belongs to the fault until it heals.
    fn tick(&mut self, sim: &mut turmoil::Sim<'_>, faulted: &Faulted, now: u64) {
        let per_ms = STALLS_PER_S / 1000.0;
        for (k, pair) in self.pairs.iter().enumerate() {
            let owned = faulted.0.contains(pair);
            let (a, b) = pair;
            match self.stalled.get(&k).copied() {
                Some(until) if now >= until || owned => {
                    self.stalled.remove(&k);
                    if !owned {
                        sim.release(a.as_str(), b.as_str());
                    }
                }
                Some(_) => {}
                None if !owned && self.rng.gen_bool(per_ms) => {
                    sim.hold(a.as_str(), b.as_str());
                    self.stalled.insert(k, now + self.rng.gen_range(STALL_MS));
                }
                None => {}
            }
        }
    }
}

/// The host pairs the active faults have partitioned or held (in either
/// direction); cleared when they heal.
#[derive(Default)]
struct Faulted(std::collections::BTreeSet<(String, String)>);

impl Faulted {
    /// The pair of hosts `a` and `b`, in one order whichever is given.
    fn pair(a: &str, b: &str) -> (String, String) {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        (x.to_string(), y.to_string())
    }

    fn note(&mut self, a: &str, b: &str) {
        self.0.insert(Faulted::pair(a, b));
    }

    fn partition(&mut self, sim: &mut turmoil::Sim<'_>, a: &str, b: &str) {
        self.note(a, b);
        sim.partition(a, b);
    }
}

/// Steps the simulation, applying and healing faults on schedule.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    schedule: &[Scheduled],
    shared: &Shared,
    dbs: &[Arc<DemoDatabase>],
    end_ms: u64,
    mut loss: Option<Loss>,
) {
    let hosts: Vec<String> = (0..REGIONS.len()).flat_map(region_hosts).chain(CLIENTS.map(String::from)).collect();
    let mut started = vec![false; schedule.len()];
    let mut ended = vec![false; schedule.len()];
    let mut crashed: Vec<String> = Vec::new();
    let mut faulted = Faulted::default();
    let mut healed = false;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        for (k, s) in schedule.iter().enumerate() {
            if !started[k] && now >= s.from_ms {
                started[k] = true;
                apply(sim, s, shared, dbs, &mut crashed, &mut faulted, now);
            }
            if started[k] && !ended[k] && now >= s.until_ms {
                ended[k] = true;
                heal(sim, &hosts, &mut crashed, &mut faulted);
                if s.fault == Fault::PrimaryDatabaseDown {
                    crate::clock::at(now, || {
                        for (r, db) in dbs.iter().enumerate() {
                            (0..controllers::SHARDS).for_each(|k| db.restart(&controllers::replica_name(k, r)));
                        }
                    });
                }
                shared.lock().note(now, format!("healed {}", s.fault));
            }
        }
        if !healed && now >= FAULTS_UNTIL_MS {
            healed = true;
            heal(sim, &hosts, &mut crashed, &mut faulted);
            let mut h = shared.lock();
            h.healed_at_ms = Some(now);
            h.note(now, "all faults healed".to_string());
        }
        if let Some(loss) = loss.as_mut() {
            loss.tick(sim, &faulted, now);
        }
        if now >= end_ms {
            return;
        }
        match sim.step() {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                shared.lock().note(now, format!("HOST ERROR: {e}"));
                return;
            }
        }
    }
}

/// The simulation's clients (outside every region).
const CLIENTS: [&str; 4] = ["writer", "observer", "operator", "runbooks"];

fn region_hosts(r: usize) -> [String; 3] {
    [node_name(r), holder_name(r), controllers::controller_name(r)]
}

/// Records that region `r` is cut off from now until `until`, with what its
/// primaries had written.
fn cut(shared: &Shared, db: &DemoDatabase, r: usize, now: u64, until: u64) {
    let primaries = db.primaries();
    let mut h = shared.lock();
    let held_leader = h.latest_leader() == Some(r as u64 + 1);
    h.cuts.push(crate::history::Cut { region: r, from_ms: now, until_ms: until, primaries, held_leader });
}

fn apply(
    sim: &mut turmoil::Sim<'_>,
    scheduled: &Scheduled,
    shared: &Shared,
    dbs: &[Arc<DemoDatabase>],
    crashed: &mut Vec<String>,
    faulted: &mut Faulted,
    now: u64,
) {
    let fault = &scheduled.fault;
    shared.lock().note(now, format!("fault {fault}"));
    match fault {
        Fault::IsolateRegion(r) => {
            cut(shared, &dbs[*r], *r, now, scheduled.until_ms);
            for other in (0..REGIONS.len()).filter(|o| o != r) {
                for a in region_hosts(*r) {
                    for b in region_hosts(other) {
                        faulted.partition(sim, a.as_str(), b.as_str());
                    }
                }
                faulted.partition(sim, node_name(*r).as_str(), "writer");
            }
        }
        Fault::CutHolder(r) => {
            for n in 0..REGIONS.len() {
                faulted.partition(sim, holder_name(*r).as_str(), node_name(n).as_str());
            }
        }
        Fault::OneWay(a, b) => {
            faulted.note(&node_name(*a), &node_name(*b));
            sim.partition_oneway(node_name(*a).as_str(), node_name(*b).as_str());
        }
        Fault::CrashNode(n) => {
            sim.crash(node_name(*n).as_str());
            crashed.push(node_name(*n));
        }
        Fault::CoordinatorOnly(r) => {
            for n in (0..REGIONS.len()).filter(|n| n != r) {
                faulted.partition(sim, node_name(*r).as_str(), node_name(n).as_str());
            }
        }
        Fault::ControllerCut(r) => {
            for n in 0..REGIONS.len() {
                faulted.partition(sim, controllers::controller_name(*r).as_str(), node_name(n).as_str());
            }
        }
        Fault::PrimaryDatabaseDown => {
            let region = shared.lock().acting.iter().rev().find(|a| a.until_ms.is_none()).map(|a| a.region);
            if let Some(r) = region {
                let primaries = dbs[r].primaries();
                shared.lock().note(now, format!("the database server of {} dies", REGIONS[r]));
                shared.lock().db_downs.push(crate::history::Cut {
                    region: r,
                    from_ms: now,
                    until_ms: scheduled.until_ms,
                    primaries,
                    held_leader: false,
                });
                crate::clock::at(now, || {
                    (0..controllers::SHARDS).for_each(|k| dbs[r].fail(&controllers::replica_name(k, r)))
                });
            }
        }
        Fault::RegionLoss(r) => {
            cut(shared, &dbs[*r], *r, now, scheduled.until_ms);
            controllers::crashed(shared, &dbs[*r], *r, now);
            for host in region_hosts(*r) {
                sim.crash(host.as_str());
                crashed.push(host);
            }
            // A holder that crashed stopped acting when it died.
            let mut h = shared.lock();
            let holder = holder_name(*r);
            for belief in h.beliefs.iter_mut().filter(|b| b.holder == holder && b.until_ms.is_none()) {
                belief.until_ms = Some(now);
            }
        }
        Fault::DelayBurst(a, b) => {
            faulted.note(&node_name(*a), &node_name(*b));
            sim.hold(node_name(*a).as_str(), node_name(*b).as_str());
        }
        Fault::CutCurrentHolder => {
            let holder = shared.lock().beliefs.iter().rev().find(|b| b.until_ms.is_none()).map(|b| b.holder.clone());
            if let Some(holder) = holder {
                for n in 0..REGIONS.len() {
                    faulted.partition(sim, holder.as_str(), node_name(n).as_str());
                }
            }
        }
        Fault::KillLeader => {
            let leader = shared.lock().latest_leader();
            if let Some(id) = leader {
                let name = node_name(id as usize - 1);
                sim.crash(name.as_str());
                crashed.push(name);
            }
        }
    }
}

/// Repairs and releases every link, restarts the crashed hosts, and hands
/// the links back from the faults (`faulted`).
fn heal(sim: &mut turmoil::Sim<'_>, hosts: &[String], crashed: &mut Vec<String>, faulted: &mut Faulted) {
    faulted.0.clear();
    for a in hosts.iter().map(String::as_str) {
        for b in hosts.iter().map(String::as_str) {
            if a != b {
                sim.repair(a, b);
                sim.release(a, b);
            }
        }
    }
    for name in crashed.drain(..) {
        sim.bounce(name.as_str());
    }
}

/// A coordinator host: the real node code on simulated TCP and memory.
async fn coordinator(
    id: u64,
    disk: Disk,
    peers: BTreeMap<u64, NodeInfo>,
    clock: SimClock,
    mutations: LeaseMutations,
    shared: Shared,
    pki: Arc<Pki>,
) -> turmoil::Result {
    let timing = TimingPreset::Wan.timing();
    let tls = pki.tls(&node_name(id as usize - 1));
    let raft_config = openraft_config(&timing)?;
    let state_machine = StateMachineStore::open(disk.vault.clone(), Arc::new(NoObserver))?;
    let node = Node::start(Assembly {
        id,
        raft_config,
        timing,
        log_store: disk.log.clone(),
        state_machine,
        channels: Channels::new(net::channel_maker(tls.clone())),
        clock: Arc::new(clock),
        metrics: Arc::new(Metrics::new()),
        mutations,
        auth: Auth::new(Roles::parse(&pki.roles)?, true, true),
    })
    .await?;
    node.bootstrap_once(&peers).await?;
    tokio::spawn(observe_leadership(node.raft.clone(), id, shared));
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", GRPC_PORT)).await?;
    node.grpc_router()?.serve_with_incoming(net::incoming(tls, listener)).await?;
    Ok(())
}

fn openraft_config(
    timing: &interlock_server::node::config::Timing,
) -> Result<openraft::Config, Box<dyn std::error::Error>> {
    let config = openraft::Config {
        cluster_name: "interlock-sim".to_string(),
        heartbeat_interval: timing.heartbeat.as_millis() as u64,
        election_timeout_min: timing.election_min.as_millis() as u64,
        election_timeout_max: timing.election_max.as_millis() as u64,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(500),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    };
    Ok(config.validate()?)
}

/// Records every (term, leader) a node reports about itself, and the log id
/// of every last applied entry it reports.
async fn observe_leadership(raft: interlock_store::Raft, id: u64, shared: Shared) {
    let mut rx = raft.metrics();
    let mut last = None;
    loop {
        let (state, term, applied) = {
            let m = rx.borrow_and_update();
            (m.state, m.current_term, m.last_applied)
        };
        if let Some(log_id) = applied {
            shared.lock().applied(id, log_id.index, (log_id.leader_id.term, log_id.leader_id.node_id));
        }
        if state == openraft::ServerState::Leader && last != Some(term) {
            last = Some(term);
            let mut h = shared.lock();
            h.elected(term, id);
            h.note(true_ms(), format!("n{id} leader in term {term}"));
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn client(endpoints: &[String], tls: &Tls) -> Result<Client, Box<dyn std::error::Error>> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(3),
        retry_budget: Duration::from_secs(4),
        ..ClientOptions::default()
    };
    Ok(Client::with_channels(endpoints.to_vec(), net::channels(endpoints, tls), options)?)
}

/// The two operators of the simulation.
pub const OPERATORS: [&str; 2] = ["op-1", "op-2"];

/// Every identity of a simulated deployment, with its certificate (from a
/// throwaway CA made per run) and its role, as a node's config would map it.
pub struct Pki {
    pub roles: Vec<String>,
    tls: BTreeMap<String, Tls>,
}

impl Pki {
    fn new() -> Pki {
        let ca = Authority::new("interlock-sim CA").expect("a throwaway CA");
        let mut roles: Vec<(String, String)> = Vec::new();
        for (r, region) in REGIONS.iter().enumerate() {
            roles.push((node_name(r), "node".into()));
            roles.push((controllers::controller_name(r), format!("controller:{region}")));
            roles.push((holder_name(r), format!("controller:{region}")));
        }
        roles.push(("writer".into(), "operator".into()));
        roles.push(("observer".into(), "viewer".into()));
        roles.extend(OPERATORS.map(|o| (o.to_string(), "operator".to_string())));
        let tls = roles
            .iter()
            .map(|(name, _)| {
                let leaf = ca.leaf(name, &[]).expect("a throwaway certificate");
                (name.clone(), Tls::from_pem(&ca.pem(&leaf)).expect("the throwaway certificate builds"))
            })
            .collect();
        Pki { roles: roles.into_iter().map(|(name, role)| format!("{name}={role}")).collect(), tls }
    }

    fn tls(&self, identity: &str) -> Tls {
        self.tls[identity].clone()
    }
}

/// A lease holder: acquires the lease whenever it can, acts (writes to the
/// fenced store) while its keeper says it holds it, and records its belief.
async fn holder(
    name: String,
    client: Client,
    options: LeaseOptions,
    ttl: Duration,
    backoff_seed: u64,
    shared: Shared,
) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(backoff_seed);
    // Maps the runtime's instants to true simulated milliseconds.
    let (origin, origin_ms) = (tokio::time::Instant::now(), true_ms());
    let to_ms = |at: tokio::time::Instant| origin_ms + at.saturating_duration_since(origin).as_millis() as u64;
    loop {
        let acquired = LeaseKeeper::acquire(&client, LEASE_KEY, &name, ttl, options.clone()).await;
        let mut keeper = match acquired {
            Ok(k) => k,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..150))).await;
                continue;
            }
        };
        let (token, from) = (keeper.token(), true_ms());
        let index = {
            let mut h = shared.lock();
            h.note(from, format!("{name} holds token {token}"));
            h.beliefs.push(Belief {
                holder: name.clone(),
                key: LEASE_KEY.to_string(),
                token,
                from_ms: from,
                until_ms: None,
            });
            h.beliefs.len() - 1
        };
        let mut until = match keeper.state() {
            LeaseState::Held { deadline } => to_ms(deadline),
            LeaseState::Lost { .. } => from,
        };
        let reason = loop {
            tokio::select! {
                biased;
                reason = keeper.lost() => break reason,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let LeaseState::Held { deadline } = keeper.state() {
                        until = until.max(to_ms(deadline));
                        let now = true_ms();
                        if now < until {
                            shared.lock().fenced.write(now, token, &name);
                        }
                    }
                }
            }
        };
        if let LeaseState::Held { deadline } = keeper.state() {
            until = until.max(to_ms(deadline));
        }
        let end = until.min(true_ms());
        {
            let mut h = shared.lock();
            h.beliefs[index].until_ms = Some(end);
            h.note(end, format!("{name} stopped acting on token {token}: {reason}"));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
    }
}

/// Writes unique keys all run long, then reads every acknowledged one back.
async fn writer(client: Client, shared: Shared, topology: interlock_core::Topology) -> turmoil::Result {
    controllers::apply_topology(&client, &topology, &shared).await;
    let mut i = 0u64;
    let mut failing = false;
    while true_ms() < FAULTS_UNTIL_MS + LIVENESS_BOUND_MS {
        let key = format!("w/{i:06}");
        let value = format!("{i}");
        let result = client.put(&key, value.clone().into_bytes()).await;
        let now = true_ms();
        failing = record_write(&shared, now, key, value, result.is_ok(), failing, result.err());
        i += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    verify_writes(&client, &shared).await;
    Ok(())
}

/// Records one write's outcome; returns whether writes are failing now.
fn record_write(
    shared: &Shared,
    now: u64,
    key: String,
    value: String,
    ok: bool,
    failing: bool,
    error: Option<interlock_client::ClientError>,
) -> bool {
    let mut h = shared.lock();
    match (ok, error) {
        (true, _) => {
            if failing {
                h.note(now, format!("writer: writes succeed again ({key})"));
            }
            h.acked_writes.insert(key, value);
            if h.healed_at_ms.is_some_and(|healed| now >= healed) && h.write_after_heal_ms.is_none() {
                h.write_after_heal_ms = Some(now);
            }
            false
        }
        (false, Some(e)) if !failing => {
            h.note(now, format!("writer: {key} failed: {e}"));
            true
        }
        (false, _) => true,
    }
}

/// Reads every acknowledged write back (linearizably) and records what is missing.
async fn verify_writes(client: &Client, shared: &Shared) {
    for _ in 0..10 {
        if let Ok(kvs) = client.range("w/", true, 0).await {
            let present: BTreeMap<String, String> =
                kvs.into_iter().map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).to_string())).collect();
            let mut h = shared.lock();
            let missing: Vec<String> =
                h.acked_writes.iter().filter(|(k, v)| present.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
            h.missing_writes = missing;
            h.verified = true;
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
