//! Deterministic simulation of whole multi-region Interlock deployments.
//!
//! The real node code (`interlock-server`'s `Node`, openraft, the lease
//! logic, the gRPC services) and the real SDK run inside turmoil: simulated
//! hosts, links with latency, partitions, crashes and restarts, and a clock
//! per host that drifts. A seed decides everything; the same seed gives the
//! same trace, byte for byte.
//!
//! Map: [`world`] builds and drives one run; [`faults`] plans the faults;
//! [`history`] is the oracle's record; [`invariants`] holds one file per
//! guarantee checked; [`controllers`] runs the region controllers (the SDK's
//! `RegionController` over a demo database), the operator and the event
//! observer; [`net`] and [`clock`] adapt turmoil to the node.

pub mod clock;
pub mod controllers;
pub mod faults;
pub mod history;
pub mod invariants;
pub mod net;
pub mod runbooks;
pub mod world;
