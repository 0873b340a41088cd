//! Hold a lease the way a region controller holds its shard's primary lease:
//! act only while the keeper says so, and stop the instant it says to.
//!
//! ```text
//! interlockd dev                      # in one terminal
//! cargo run -p interlock-client --example lease_keeper -- $(cat .interlock-dev/endpoints)
//! ```
//! Kill the leader (`kill -9`): the lease is kept. Stop the whole cluster:
//! the example stops "acting" before the coordinator could grant it again.

use interlock_client::{Client, LeaseKeeper, LeaseOptions, LeaseState};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7001".to_string());
    let client = Client::new(endpoints.split(','))?;
    let mut keeper = LeaseKeeper::acquire(
        &client,
        "lock/orders",
        "example-controller",
        Duration::from_secs(5),
        LeaseOptions::default(),
    )
    .await?;
    println!("acquired with fencing token {}; acting as primary", keeper.token());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            reason = keeper.lost() => {
                println!("STOP acting as primary now: {reason}");
                return Ok(());
            }
            _ = tick.tick() => {
                if let LeaseState::Held { deadline } = keeper.state() {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    // A real controller passes keeper.token() with every write
                    // to storage that can check fencing tokens.
                    println!("acting (token {}), safe for {} ms more", keeper.token(), left.as_millis());
                }
            }
        }
    }
}
