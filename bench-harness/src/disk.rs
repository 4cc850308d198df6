//! The disk's raw durability latency: 256-byte pwrite + fdatasync into a pre-written file (so no
//! block allocation or size change rides on the sync, as with a preallocated WAL segment), in
//! the directory the servers' data dirs live in. Reported next to the servers' figures, since a
//! put cannot be faster than one fdatasync.

use crate::summary::{Recorder, Summary};
use crate::BenchError;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

pub const WRITE_BYTES: usize = 256;
/// The probe cycles through this much of its file.
const FILE_BYTES: u64 = 1 << 20;

/// Runs writes for `duration` in a scratch file inside `dir` (removed afterwards).
pub fn fdatasync_probe(dir: &Path, duration: Duration) -> Result<Summary, BenchError> {
    let path = dir.join(format!("ringkv-bench-fdatasync-{}", std::process::id()));
    let result = probe_file(&path, duration);
    let _ = std::fs::remove_file(&path);
    result
}

fn probe_file(path: &Path, duration: Duration) -> Result<Summary, BenchError> {
    let what = format!("fdatasync probe {}", path.display());
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .map_err(BenchError::io(what.clone()))?;
    file.write_all(&vec![0; FILE_BYTES as usize])
        .and_then(|()| file.sync_all())
        .map_err(BenchError::io(what.clone()))?;
    let block = [0xa5_u8; WRITE_BYTES];
    let mut recorder = Recorder::default();
    let start = Instant::now();
    let mut offset = 0;
    while start.elapsed() < duration {
        let write_start = Instant::now();
        file.write_all_at(&block, offset)
            .and_then(|()| file.sync_data())
            .map_err(BenchError::io(what.clone()))?;
        recorder.ok(write_start.elapsed(), start.elapsed());
        offset = (offset + WRITE_BYTES as u64) % FILE_BYTES;
    }
    Ok(recorder.summary("pwrite256+fdatasync", start.elapsed()))
}
