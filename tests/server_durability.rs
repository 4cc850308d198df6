//! SIGKILL loop against the real binary: several clients put concurrently and record every
//! acknowledged (key, value, revision); the server is killed at random moments and restarted on
//! the same data dir; at the end every acknowledged write must be readable at its revision with
//! that value and that mod_revision. The seed is printed so a failure replays
//! (`RINGKV_SIGKILL_SEED`).

mod server_support;

use std::time::{Duration, Instant};

use server_support::acked::{assert_all_readable, writer, Ack};
use server_support::Server;

const CYCLES_MIN: usize = 20;
const TIME_BUDGET: Duration = Duration::from_secs(60);
const CLIENTS: usize = 4;
/// Keys per client: small, so keys are overwritten and old revisions must stay readable.
const KEYS_PER_CLIENT: u64 = 16;
/// Most puts one writer makes in a cycle (far more than a cycle's 50-450 ms allow).
const PUTS_PER_CYCLE_MAX: u64 = 100_000;

/// xorshift64*: enough randomness for kill timing, and replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let seed = std::env::var("RINGKV_SIGKILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("sigkill seed: RINGKV_SIGKILL_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let endpoint = server.endpoint();
    let started = Instant::now();
    let mut acks: Vec<Ack> = Vec::new();
    let mut cycle = 0;
    while cycle < CYCLES_MIN || started.elapsed() < TIME_BUDGET / 3 {
        assert!(
            started.elapsed() < TIME_BUDGET,
            "only {cycle} cycles in {TIME_BUDGET:?}"
        );
        let writers: Vec<_> = (0..CLIENTS)
            .map(|client| {
                tokio::spawn(writer(
                    endpoint.clone(),
                    client,
                    cycle,
                    KEYS_PER_CLIENT,
                    PUTS_PER_CYCLE_MAX,
                ))
            })
            .collect();
        let delay = Duration::from_millis(50 + rng.next() % 400);
        tokio::time::sleep(delay).await;
        server.kill();
        for writer in writers {
            acks.extend(writer.await.unwrap());
        }
        server.restart();
        cycle += 1;
    }
    eprintln!("{cycle} kill cycles, {} acknowledged writes", acks.len());
    assert!(
        acks.len() > cycle,
        "the load made no progress: {}",
        server.log()
    );

    assert_all_readable(endpoint, &acks, &format!("seed {seed}")).await;
    // Revisions are unique across restarts: no acknowledged revision was handed out twice.
    let mut revisions: Vec<i64> = acks.iter().map(|a| a.revision).collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        acks.len(),
        "a revision was acknowledged twice"
    );
}
