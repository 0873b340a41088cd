//! The databases a region controller drives, each a
//! [`interlock_client::ReplicaDriver`]:
//! - [`demo`]: a stand-in database for `interlockd dev`, the simulation and
//!   the tests.
//!
//! PostgreSQL and `exec` hooks come next (see the issues).

pub mod demo;
