//! Fairness and bounded memory of the backup catalogue, at a scale a unit
//! test affords (the example measures 10 000 shards): 300 shards, one backup
//! a day each for 9 days, restore tests of 5 minutes, one slot per region.
//! Every backup older than `verify_within` is verified, and no shard's
//! catalogue grows past its retention.

#[path = "../examples/backup_scale.rs"]
mod scale;

#[test]
fn every_shard_is_verified_within_its_window_and_the_catalogue_stays_bounded() {
    let s = scale::run(300, 9, 120_000, 300_000, 1);
    assert!(s.backups_reported >= 300 * 9, "{s:?}");
    assert_eq!(s.unverified_at_end, 0, "{s:?}");
    assert!(s.max_wait_ms <= 86_400_000, "every backup verified within verify_within: {s:?}");
    // retain 7, plus those inside the RPO target (25 h): at most 8 a day apart.
    assert!((7..=8).contains(&s.max_backups_per_shard), "{s:?}");
}
