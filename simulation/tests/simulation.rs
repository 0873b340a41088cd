//! The simulation's own guarantees: a seed decides everything, the honest
//! system holds every invariant on pinned seeds, and every deliberate bug is
//! caught within 200 seeds (so the checkers can fail).

use interlock_simulation::world::{run, Mutation, Report, RunConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Runs `f` on a thread with a stack big enough for a simulated cluster.
fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new().stack_size(64 << 20).spawn_scoped(s, f).expect("thread").join().expect("join")
    })
}

fn run_seed(seed: u64, mutation: Option<Mutation>) -> Report {
    on_big_stack(move || run(&RunConfig { seed, mutation }))
}

#[test]
fn the_same_seed_gives_the_same_trace_byte_for_byte() {
    let a = run_seed(3, None);
    let b = run_seed(3, None);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.digest, b.digest);
    let c = run_seed(4, None);
    assert_ne!(a.digest, c.digest, "another seed, another run");
}

#[test]
fn pinned_seeds_hold_every_invariant() {
    for seed in 0..6 {
        let report = run_seed(seed, None);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:#?}\nreproduce: cargo run -p interlock-simulation --bin interlock-sim -- --seed {seed} --trace",
            report.violations
        );
        assert!(report.acked_writes > 0 && report.lease_handovers > 0, "seed {seed} exercised nothing: {report:?}");
    }
}

/// The first seed below 200 whose run shows a violation, searching on two threads.
fn first_violation(mutation: Mutation) -> Option<u64> {
    let next = AtomicU64::new(0);
    let found: Mutex<Option<u64>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..2 {
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn_scoped(s, || loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    let done = found.lock().expect("lock").is_some_and(|f| f < seed);
                    if seed >= 200 || done {
                        return;
                    }
                    if !run(&RunConfig { seed, mutation: Some(mutation) }).violations.is_empty() {
                        let mut f = found.lock().expect("lock");
                        *f = Some(f.map_or(seed, |old| old.min(seed)));
                    }
                })
                .expect("thread");
        }
    });
    found.into_inner().expect("lock")
}

#[test]
fn a_keepalive_answered_without_leadership_confirmation_is_caught() {
    let seed = first_violation(Mutation::SkipKeepaliveConfirmation);
    assert!(seed.is_some(), "no violation within 200 seeds: the checkers would miss this bug");
}

#[test]
fn a_new_leader_that_does_not_reset_lease_deadlines_is_caught() {
    let seed = first_violation(Mutation::NoResetOnNewTerm);
    assert!(seed.is_some(), "no violation within 200 seeds: the checkers would miss this bug");
}

#[test]
fn a_holder_deadline_without_the_drift_term_is_caught() {
    let seed = first_violation(Mutation::HolderNoDrift);
    assert!(seed.is_some(), "no violation within 200 seeds: the checkers would miss this bug");
}
