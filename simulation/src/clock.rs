//! Per-host clocks with an offset and a rate, on top of simulated time.
//!
//! turmoil simulates tokio's time but offers no skew; each host's clock here
//! runs at `rate` local milliseconds per true millisecond (e.g. 0.99..1.01)
//! and starts at its own offset.

use interlock_server::ctx::Clock;

/// A simulated host's clock.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    /// Local milliseconds per true millisecond.
    pub rate: f64,
    /// Wall-clock offset from the simulation epoch, in ms.
    pub offset_ms: i64,
}

/// True simulated time since the start, in ms.
pub fn true_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

impl Clock for SimClock {
    fn unix_ms(&self) -> u64 {
        // 2026-01-01 plus local elapsed time plus the offset.
        let base: i64 = 1_767_225_600_000;
        (base + self.offset_ms + self.monotonic_ms() as i64).max(0) as u64
    }

    fn monotonic_ms(&self) -> u64 {
        let true_elapsed = turmoil::sim_elapsed().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        (true_elapsed * self.rate) as u64
    }
}
