//! The databases a region controller drives, each a
//! [`interlock_client::ReplicaDriver`]:
//! - [`demo`]: a stand-in database for `interlockd dev`, the simulation and
//!   the tests;
//! - [`exec`]: hook programs, for any database (MySQL, Redis, your own
//!   tooling);
//! - [`postgres`]: PostgreSQL streaming replication, built in.
//!
//! [`backups`] is what they share for backups: the store and the checksum.

pub mod backups;
pub mod demo;
pub mod exec;
pub mod postgres;
