//! WAL benchmark: the raw pwrite+fdatasync floor of the disk, then WAL appends/s, latency and
//! records per fdatasync for 1, 16 and 256 concurrent submitters, measured in the same run on
//! the same disk. Prints a markdown table.
//!
//! `cargo bench --bench wal_bench -- [--duration-ms N] [--dir PATH] [--record-bytes N]`
//! (CI runs it with a tiny `--duration-ms` so it cannot rot; numbers worth keeping come from a
//! quiet machine).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use ringkv::wal::{Record, Wal, WalConfig};

struct Args {
    duration: Duration,
    dir: Option<PathBuf>,
    record_bytes: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        duration: Duration::from_secs(3),
        dir: None,
        record_bytes: 256,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--duration-ms" => {
                args.duration =
                    Duration::from_millis(it.next().expect("value").parse().expect("ms"));
            }
            "--dir" => args.dir = Some(PathBuf::from(it.next().expect("value"))),
            "--record-bytes" => {
                args.record_bytes = it.next().expect("value").parse().expect("bytes");
            }
            // `cargo bench` passes `--bench`; anything else unknown is ignored the same way.
            _ => {}
        }
    }
    args
}

struct Row {
    name: String,
    ops: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    syncs: u64,
}

impl Row {
    fn print(&self) {
        let per_sec = self.ops as f64 / self.elapsed.as_secs_f64();
        let per_sync = if self.syncs == 0 {
            0.0
        } else {
            self.ops as f64 / self.syncs as f64
        };
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {:.1} |",
            self.name,
            self.ops,
            per_sec,
            self.latency_us.value_at_quantile(0.5),
            self.latency_us.value_at_quantile(0.99),
            self.syncs,
            per_sync
        );
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// The floor: one 256-byte pwrite and one fdatasync at a time into a preallocated file.
fn raw_floor(dir: &Path, duration: Duration, record_bytes: usize) -> Row {
    let path = dir.join("raw-floor.dat");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let prealloc_bytes: i64 = 64 << 20;
    // SAFETY: fd is valid for the life of `file`; fallocate only reads its integer arguments.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, prealloc_bytes) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    file.sync_all().expect("sync");
    let buf = vec![0x5a; record_bytes];
    let mut latency_us = histogram();
    let mut ops = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let offset = (ops * record_bytes as u64) % (prealloc_bytes as u64 - record_bytes as u64);
        file.write_all_at(&buf, offset).expect("pwrite");
        file.sync_data().expect("fdatasync");
        latency_us
            .record(t.elapsed().as_micros().max(1) as u64)
            .expect("record");
        ops += 1;
    }
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(&path).expect("remove");
    Row {
        name: format!("raw pwrite {record_bytes} B + fdatasync"),
        ops,
        elapsed,
        latency_us,
        syncs: ops,
    }
}

/// `submitters` concurrent loops of "append one entry, wait until durable", spread over a few
/// OS threads. Indexes are handed out and queued under one lock, as the raft loop orders them.
fn wal_run(dir: &Path, submitters: usize, duration: Duration, record_bytes: usize) -> Row {
    let wal_dir = dir.join(format!("wal-{submitters}"));
    let (wal, _) = Wal::open(&wal_dir, WalConfig::default()).expect("open wal");
    let syncs_before = wal.stats().syncs;
    let next_index = Arc::new(Mutex::new(0u64));
    let threads = submitters.clamp(1, 4);
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = wal.clone();
            let next_index = next_index.clone();
            let mine = submitters / threads + usize::from(t < submitters % threads);
            std::thread::spawn(move || {
                let mut latency_us = histogram();
                let mut ops = 0u64;
                futures::executor::block_on(async {
                    let mut loops: FuturesUnordered<_> = (0..mine)
                        .map(|_| {
                            let wal = wal.clone();
                            let next_index = next_index.clone();
                            async move {
                                let mut samples = Vec::new();
                                let data = vec![0xa5; record_bytes];
                                while Instant::now() < deadline {
                                    let t = Instant::now();
                                    let durable = {
                                        let mut next = next_index.lock();
                                        *next += 1;
                                        wal.append(vec![Record::Entry {
                                            index: *next,
                                            term: 1,
                                            data: data.clone(),
                                        }])
                                    };
                                    durable.await.expect("append");
                                    samples.push(t.elapsed().as_micros().max(1) as u64);
                                }
                                samples
                            }
                        })
                        .collect();
                    while let Some(samples) = loops.next().await {
                        ops += samples.len() as u64;
                        for us in samples {
                            latency_us.record(us).expect("record");
                        }
                    }
                });
                (ops, latency_us)
            })
        })
        .collect();
    let mut latency_us = histogram();
    let mut ops = 0;
    for h in handles {
        let (n, hist) = h.join().expect("submitter thread");
        ops += n;
        latency_us.add(hist).expect("merge");
    }
    let elapsed = start.elapsed();
    let syncs = wal.stats().syncs - syncs_before;
    wal.close().expect("close");
    std::fs::remove_dir_all(&wal_dir).expect("cleanup");
    Row {
        name: format!("wal, {submitters} submitters, {record_bytes} B entries"),
        ops,
        elapsed,
        latency_us,
        syncs,
    }
}

fn main() {
    let args = parse_args();
    let tmp = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!(
        "wal_bench: dir {}, {cores} cores, {:?} per row\n",
        tmp.path().display(),
        args.duration
    );
    println!("| scenario | ops | ops/s | p50 us | p99 us | fdatasyncs | records/sync |");
    println!("|---|---|---|---|---|---|---|");
    raw_floor(tmp.path(), args.duration, args.record_bytes).print();
    for submitters in [1, 16, 256] {
        wal_run(tmp.path(), submitters, args.duration, args.record_bytes).print();
    }
}
