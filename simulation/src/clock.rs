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

thread_local! {
    /// The true time the driver works at, outside every host (see [`at`]).
    static DRIVER_NOW: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// True simulated time since the start, in ms: on a host, turmoil's; in the
/// driver (faults applied between steps), the time given to [`at`].
pub fn true_ms() -> u64 {
    turmoil::sim_elapsed().map(|d| d.as_millis() as u64).or_else(|| DRIVER_NOW.with(|n| n.get())).unwrap_or(0)
}

/// Runs `f` (in the driver, outside every host) with [`true_ms`] at `now`,
/// so that what it records (a database dying) carries the right time.
pub fn at<T>(now: u64, f: impl FnOnce() -> T) -> T {
    DRIVER_NOW.with(|n| n.set(Some(now)));
    let out = f();
    DRIVER_NOW.with(|n| n.set(None));
    out
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
