//! The simulation's own guarantees: a seed decides everything, the honest
//! system holds every invariant on pinned seeds, and every deliberate bug is
//! caught within 200 seeds (so the checkers can fail).
//!
//! The tests drive the `interlock-sim` binary, which runs every seed in a
//! fresh process, exactly as a developer reproducing a seed would.

use serde_json::Value;
use std::process::Command;

fn sim(args: &[&str]) -> Value {
    let output =
        Command::new(env!("CARGO_BIN_EXE_interlock-sim")).args(args).arg("--json").output().expect("run interlock-sim");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("interlock-sim {args:?} printed no JSON ({e}):\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

#[test]
fn the_same_seed_gives_the_same_trace_byte_for_byte() {
    let a = sim(&["--seed", "3"]);
    let b = sim(&["--seed", "3"]);
    assert_eq!(a["digests"], b["digests"], "one seed, two different runs");
    let c = sim(&["--seed", "4"]);
    assert_ne!(a["digests"], c["digests"], "another seed, another run");
}

#[test]
fn pinned_seeds_hold_every_invariant() {
    let report = sim(&["--seeds", "0..6", "--jobs", "2"]);
    // Seeds 0..6 include regions cut off while holding primaries, and failing over.
    let completed = report["failover_ms"]["completed"].as_u64().unwrap_or(0);
    assert!(completed >= 1, "no completed failover in seeds 0..6: {report}");
    assert_eq!(report["runs"], 6);
    assert_eq!(
        report["violations"], 0,
        "failing seeds {}: reproduce with `cargo run -p interlock-simulation --bin interlock-sim -- --seed N --trace`",
        report["failures"]
    );
    assert!(report["acknowledged_writes"].as_u64().unwrap_or(0) > 0);
    assert!(report["lease_holdings"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn pinned_seeds_on_a_lossy_wan_hold_every_invariant_and_declare_no_region_falsely() {
    // Seed 3 elects two leaders in term 1 (openraft's leader ids are
    // (term, node)); the safety checker must accept that and nothing worse.
    let report = sim(&["--seeds", "0..4", "--jobs", "2", "--lossy"]);
    assert_eq!(report["runs"], 4);
    assert_eq!(report["lossy"], true);
    assert_eq!(report["false_declarations"], 0, "{report}");
    assert_eq!(report["violations"], 0, "failing seeds {} (reproduce with --lossy)", report["failures"]);
    assert!(report["acknowledged_writes"].as_u64().unwrap_or(0) > 0);
}

fn caught(mutation: &str) {
    caught_with(mutation, &[]);
}

fn caught_with(mutation: &str, extra: &[&str]) {
    let args = [&["--seeds", "0..200", "--jobs", "2", "--mutation", mutation, "--stop-at-first"], extra].concat();
    let report = sim(&args);
    let failures = report["failures"].as_array().map_or(0, Vec::len);
    assert!(failures > 0, "{mutation}: no violation within 200 seeds, the checkers would miss this bug: {report}");
}

#[test]
fn a_keepalive_answered_without_leadership_confirmation_is_caught() {
    caught("skip-keepalive-confirmation");
}

#[test]
fn a_new_leader_that_does_not_reset_lease_deadlines_is_caught() {
    caught("no-reset-on-new-term");
}

#[test]
fn a_holder_deadline_without_the_drift_term_is_caught() {
    // The drift window is widest with the longest TTL (2% of 20 s).
    caught_with("holder-no-drift", &["--lease-ttl-s", "20"]);
}

#[test]
fn declaring_regions_lost_without_witnesses_is_caught() {
    caught("no-witnesses");
}

#[test]
fn a_revoke_that_frees_a_primary_lease_at_once_is_caught() {
    caught("revoke-frees-at-once");
}

#[test]
fn a_controller_that_trusts_a_failed_demote_is_caught() {
    caught("trust-failed-demote");
}

#[test]
fn giving_up_a_dead_primary_without_fencing_it_is_caught() {
    caught("give-up-unfenced");
}

#[test]
fn a_runbook_step_re_run_after_a_leader_change_is_caught() {
    caught("rerun-runbook-effects");
}

#[test]
fn promotions_sharing_an_entry_and_its_index_as_their_token_are_caught() {
    caught("shared-entry-token");
}
