//! The faults a run suffers, planned up front from the seed.

use crate::world::REGIONS;
use rand::Rng;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A region (its coordinator and holder) cut from the other regions.
    IsolateRegion(usize),
    /// A holder cut from every coordinator (a controller-only partition).
    CutHolder(usize),
    /// Coordinator a can no longer send to coordinator b.
    OneWay(usize, usize),
    /// A coordinator crashes and restarts when the fault ends.
    CrashNode(usize),
    /// The current leader crashes and restarts when the fault ends.
    KillLeader,
    /// A coordinator cut from the other coordinators only; every holder can
    /// still reach it (a coordinator-only partition).
    CoordinatorOnly(usize),
    /// A whole region goes down (coordinator and holder crash) and returns.
    RegionLoss(usize),
    /// Traffic between two regions' coordinators is held back, then delivered
    /// in a burst.
    DelayBurst(usize, usize),
    /// Whoever holds the lease now is cut from every coordinator, for longer
    /// than the lease TTL (so the lease must change hands).
    CutCurrentHolder,
    /// A region's controller cut from every coordinator while the other
    /// regions' controllers still reach it: a partial partition that must
    /// not be taken for a region loss.
    ControllerCut(usize),
    /// The database server under a current primary dies while its region
    /// (coordinator, controller, network) lives; it restarts when the fault
    /// ends — as a primary again, unless it was fenced meanwhile.
    PrimaryDatabaseDown,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::IsolateRegion(r) => write!(f, "isolate region {}", REGIONS[*r]),
            Fault::CutHolder(r) => write!(f, "cut holder h-{} from the coordinators", REGIONS[*r]),
            Fault::OneWay(a, b) => write!(f, "one-way partition n{} -> n{}", a + 1, b + 1),
            Fault::CrashNode(n) => write!(f, "crash n{}", n + 1),
            Fault::KillLeader => write!(f, "kill the leader"),
            Fault::CoordinatorOnly(n) => write!(f, "cut n{} from the other coordinators only", n + 1),
            Fault::RegionLoss(r) => write!(f, "lose region {} (crash its hosts)", REGIONS[*r]),
            Fault::DelayBurst(a, b) => write!(f, "hold traffic between n{} and n{}", a + 1, b + 1),
            Fault::CutCurrentHolder => write!(f, "cut the current lease holder from the coordinators"),
            Fault::ControllerCut(r) => write!(f, "cut controller c-{} from the coordinators", REGIONS[*r]),
            Fault::PrimaryDatabaseDown => write!(f, "the database server under a current primary dies"),
        }
    }
}

/// A fault and when it starts and ends (true ms).
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub fault: Fault,
    pub from_ms: u64,
    pub until_ms: u64,
}

impl fmt::Display for Scheduled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from {} ms to {} ms", self.fault, self.from_ms, self.until_ms)
    }
}

/// One fault at a time, back to back with calm gaps, within [from, until).
/// Faults last from 2 s to a lease TTL plus 10 s, so that some outlast it;
/// a flapping region is a burst of short isolations.
pub fn plan(rng: &mut impl Rng, from_ms: u64, until_ms: u64, lease_ttl_ms: u64) -> Vec<Scheduled> {
    let mut schedule = Vec::new();
    let mut t = from_ms;
    loop {
        let mut duration = rng.gen_range(2_000..12_000);
        let r = rng.gen_range(0..REGIONS.len());
        let other = (r + 1 + rng.gen_range(0..REGIONS.len() - 1)) % REGIONS.len();
        let fault = match rng.gen_range(0..12) {
            0 => Fault::IsolateRegion(r),
            1 => Fault::CutHolder(r),
            2 => Fault::OneWay(r, other),
            3 => Fault::CrashNode(r),
            4 => Fault::KillLeader,
            5 => Fault::CoordinatorOnly(r),
            6 => Fault::RegionLoss(r),
            7 => {
                duration = rng.gen_range(500..3_000);
                Fault::DelayBurst(r, other)
            }
            8 => {
                duration = lease_ttl_ms + rng.gen_range(1_000..8_000);
                Fault::CutCurrentHolder
            }
            9 => Fault::ControllerCut(r),
            10 => {
                duration = rng.gen_range(4_000..20_000);
                Fault::PrimaryDatabaseDown
            }
            _ => {
                // A flapping region: isolated and reconnected in short bursts.
                let end = (t + duration).min(until_ms);
                let mut at = t;
                while at + 400 < end {
                    let on = rng.gen_range(400..1_500).min(end - at);
                    schedule.push(Scheduled { fault: Fault::IsolateRegion(r), from_ms: at, until_ms: at + on });
                    at += on + rng.gen_range(300..1_500);
                }
                t = at + rng.gen_range(1_000..6_000);
                if t >= until_ms {
                    return schedule;
                }
                continue;
            }
        };
        if t + duration >= until_ms {
            return schedule;
        }
        schedule.push(Scheduled { fault, from_ms: t, until_ms: t + duration });
        t += duration + rng.gen_range(1_000..6_000);
    }
}
