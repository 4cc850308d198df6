//! The page store's seam to the disk: the `Disk`/`DiskFile` traits, the real implementation over
//! a directory, and `SimDisk`, a simulated disk for crash tests that loses unsynced writes and
//! tears the last one.
//!
//! `DirDisk` files read, write and fdatasync through io_uring: each thread that touches a file
//! gets its own small ring (created on first use, kept for the thread's life), submits one
//! request and waits for its completion. The buffer outlives the request because the call does
//! not return before the completion is reaped. If the kernel refuses io_uring (old kernel,
//! seccomp), the thread falls back to `pread`/`pwrite`/`fdatasync`; `uring_ops()` tells tests
//! which path ran.
//!
//! Crash model of `SimDisk` (what the page store must survive):
//! 1. Writes and `set_len` since a file's last `sync_data` are pending. At a crash, a random
//!    prefix of the pending operations of each file reaches the disk, in order; the first
//!    operation past that prefix, if a write, is torn: a random number of its 512-byte sectors
//!    (possibly zero) land, the rest keep their old bytes. Everything later is lost.
//! 2. Creating or removing a file is durable only after `sync_dir`. At a crash, a file created
//!    since the last `sync_dir` disappears and a file removed since then comes back with its
//!    durable contents.
//! 3. `fail_after(n)` makes every operation after the next `n` fail with an I/O error, which is
//!    how a test stops a store mid-commit; `crash_image` then gives the disk a restart would see.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

/// Sector size assumed atomic by the crash model: a torn write lands in whole sectors.
pub const SECTOR_BYTES: usize = 512;

/// A flat namespace of files: the page store's directory.
pub trait Disk: Send + Sync + 'static {
    /// Opens `name`, creating an empty file if it does not exist.
    fn open(&self, name: &str) -> io::Result<Arc<dyn DiskFile>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Names of the files present, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Makes creations and removals so far durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// A human-readable location for error messages (`Corruption { file, .. }`).
    fn path_of(&self, name: &str) -> PathBuf;
}

/// One file. Methods take `&self` so that readers on several threads share it.
pub trait DiskFile: Send + Sync {
    /// Fills `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write and `set_len` before it durable.
    fn sync_data(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// The real disk: files in one directory.
pub struct DirDisk {
    dir: PathBuf,
}

impl DirDisk {
    pub fn new(dir: impl AsRef<Path>) -> io::Result<DirDisk> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(DirDisk {
            dir: dir.as_ref().to_path_buf(),
        })
    }
}

impl Disk for DirDisk {
    fn open(&self, name: &str) -> io::Result<Arc<dyn DiskFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(name))?;
        Ok(Arc::new(RealFile { file }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct RealFile {
    file: File,
}

/// Entries per thread ring: one request is in flight at a time.
const RING_ENTRIES: u32 = 4;
/// Largest single read or write request; longer transfers loop.
const URING_CHUNK_BYTES: usize = 1 << 30;

static URING_OPS: AtomicU64 = AtomicU64::new(0);

/// Requests completed through io_uring so far, process-wide.
pub fn uring_ops() -> u64 {
    URING_OPS.load(Ordering::Relaxed)
}

/// This thread's ring, created on first use.
enum ThreadRing {
    Untried,
    Refused,
    Ready(Box<IoUring>),
}

thread_local! {
    static RING: RefCell<ThreadRing> = const { RefCell::new(ThreadRing::Untried) };
}

/// Submits `entry` on this thread's ring and waits for its result (bytes transferred).
/// `Ok(None)` if this thread has no ring. The caller keeps every buffer `entry` points to alive
/// and unaliased until this returns, which covers the whole request.
fn uring_submit(entry: &io_uring::squeue::Entry) -> io::Result<Option<usize>> {
    RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        if matches!(*slot, ThreadRing::Untried) {
            *slot = match IoUring::new(RING_ENTRIES) {
                Ok(ring) => ThreadRing::Ready(Box::new(ring)),
                Err(_) => ThreadRing::Refused,
            };
        }
        let ThreadRing::Ready(ring) = &mut *slot else {
            return Ok(None);
        };
        // SAFETY: the entry's buffer stays valid until the completion is reaped below.
        unsafe { ring.submission().push(entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        loop {
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Some(cqe) = ring.completion().next() {
                URING_OPS.fetch_add(1, Ordering::Relaxed);
                let res = cqe.result();
                return if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(Some(res as usize))
                };
            }
        }
    })
}

impl DiskFile for RealFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        let mut done = 0;
        while done < buf.len() {
            let chunk = &mut buf[done..];
            let len = chunk.len().min(URING_CHUNK_BYTES) as u32;
            let entry = opcode::Read::new(fd, chunk.as_mut_ptr(), len)
                .offset(offset + done as u64)
                .build();
            let n = match uring_submit(&entry) {
                Ok(Some(n)) => n,
                Ok(None) => return self.file.read_exact_at(chunk, offset + done as u64),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                ));
            }
            done += n;
        }
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        let mut done = 0;
        while done < buf.len() {
            let chunk = &buf[done..];
            let len = chunk.len().min(URING_CHUNK_BYTES) as u32;
            let entry = opcode::Write::new(fd, chunk.as_ptr(), len)
                .offset(offset + done as u64)
                .build();
            let n = match uring_submit(&entry) {
                Ok(Some(n)) => n,
                Ok(None) => return self.file.write_all_at(chunk, offset + done as u64),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
            }
            done += n;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        match uring_submit(&entry)? {
            Some(_) => Ok(()),
            None => self.file.sync_data(),
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

/// An in-memory disk with the crash model described in the module doc. Cheap to clone; clones
/// share the same state.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

#[derive(Default)]
struct SimState {
    files: BTreeMap<String, Arc<SimFile>>,
    /// Names as of the last `sync_dir`, with the file objects they named then.
    durable_names: BTreeMap<String, Arc<SimFile>>,
    /// Operations left before every call fails; `None` means no limit.
    ops_left: Option<u64>,
}

#[derive(Default)]
struct SimFile {
    inner: Mutex<SimFileState>,
}

#[derive(Default, Clone)]
struct SimFileState {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<PendingOp>,
}

#[derive(Clone)]
enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// After `ops` more file or directory operations, every operation fails with an I/O error.
    pub fn fail_after(&self, ops: u64) {
        self.state.lock().ops_left = Some(ops);
    }

    /// The disk a restart would find if the machine lost power now, with torn writes chosen by
    /// `seed`. The returned disk is independent of `self` and has no failure budget.
    #[must_use]
    pub fn crash_image(&self, seed: u64) -> SimDisk {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let state = self.state.lock();
        let mut files = BTreeMap::new();
        for (name, file) in &state.durable_names {
            let contents = file.inner.lock().crash_contents(&mut rng);
            let image = SimFileState {
                durable: contents.clone(),
                current: contents,
                pending: Vec::new(),
            };
            files.insert(
                name.clone(),
                Arc::new(SimFile {
                    inner: Mutex::new(image),
                }),
            );
        }
        SimDisk {
            state: Arc::new(Mutex::new(SimState {
                durable_names: files.clone(),
                files,
                ops_left: None,
            })),
        }
    }

    fn charge(&self) -> io::Result<()> {
        charge(&mut self.state.lock())
    }
}

fn charge(state: &mut SimState) -> io::Result<()> {
    match &mut state.ops_left {
        Some(0) => Err(io::Error::other("simulated crash: disk unavailable")),
        Some(n) => {
            *n -= 1;
            Ok(())
        }
        None => Ok(()),
    }
}

impl SimFileState {
    fn crash_contents(&self, rng: &mut impl Rng) -> Vec<u8> {
        let mut out = self.durable.clone();
        let landed = rng.gen_range(0..=self.pending.len());
        for op in &self.pending[..landed] {
            apply(&mut out, op);
        }
        if let Some(PendingOp::Write { offset, data }) = self.pending.get(landed) {
            let sectors = data.len().div_ceil(SECTOR_BYTES);
            let torn_bytes = (rng.gen_range(0..=sectors) * SECTOR_BYTES).min(data.len());
            apply(
                &mut out,
                &PendingOp::Write {
                    offset: *offset,
                    data: data[..torn_bytes].to_vec(),
                },
            );
        }
        out
    }
}

fn apply(buf: &mut Vec<u8>, op: &PendingOp) {
    match op {
        PendingOp::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[start..end].copy_from_slice(data);
        }
        PendingOp::SetLen(len) => buf.resize(*len as usize, 0),
    }
}

struct SimHandle {
    disk: SimDisk,
    file: Arc<SimFile>,
}

impl Disk for SimDisk {
    fn open(&self, name: &str) -> io::Result<Arc<dyn DiskFile>> {
        let mut state = self.state.lock();
        charge(&mut state)?;
        let file = state.files.entry(name.to_string()).or_default().clone();
        Ok(Arc::new(SimHandle {
            disk: self.clone(),
            file,
        }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.state.lock();
        charge(&mut state)?;
        state
            .files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut state = self.state.lock();
        charge(&mut state)?;
        Ok(state.files.keys().cloned().collect())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.state.lock();
        charge(&mut state)?;
        state.durable_names = state.files.clone();
        Ok(())
    }

    fn path_of(&self, name: &str) -> PathBuf {
        PathBuf::from("sim").join(name)
    }
}

impl DiskFile for SimHandle {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk.charge()?;
        let f = self.file.inner.lock();
        let start = offset as usize;
        let end = start + buf.len();
        if end > f.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end of simulated file",
            ));
        }
        buf.copy_from_slice(&f.current[start..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.disk.charge()?;
        let mut f = self.file.inner.lock();
        let op = PendingOp::Write {
            offset,
            data: buf.to_vec(),
        };
        apply(&mut f.current, &op);
        f.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.disk.charge()?;
        let mut f = self.file.inner.lock();
        let SimFileState {
            durable, current, ..
        } = &mut *f;
        durable.clone_from(current);
        f.pending.clear();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.disk.charge()?;
        Ok(self.file.inner.lock().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.disk.charge()?;
        let mut f = self.file.inner.lock();
        let op = PendingOp::SetLen(len);
        apply(&mut f.current, &op);
        f.pending.push(op);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn synced_writes_survive_a_crash_and_unsynced_files_vanish() {
        let disk = SimDisk::new();
        let f = disk.open("a").unwrap();
        f.write_all_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        disk.sync_dir().unwrap();
        let g = disk.open("b").unwrap();
        g.write_all_at(b"lost", 0).unwrap();
        g.sync_data().unwrap();
        for seed in 0..20 {
            let image = disk.crash_image(seed);
            assert_eq!(image.list().unwrap(), vec!["a".to_string()]);
            let mut buf = [0u8; 7];
            image.open("a").unwrap().read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(&buf, b"durable");
        }
    }

    #[test]
    fn an_unsynced_write_is_lost_whole_or_torn_at_a_sector_boundary() {
        let disk = SimDisk::new();
        let f = disk.open("a").unwrap();
        f.write_all_at(&[1u8; 4 * SECTOR_BYTES], 0).unwrap();
        f.sync_data().unwrap();
        disk.sync_dir().unwrap();
        f.write_all_at(&[2u8; 4 * SECTOR_BYTES], 0).unwrap();
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let image = disk.crash_image(seed);
            let mut buf = vec![0u8; 4 * SECTOR_BYTES];
            image.open("a").unwrap().read_exact_at(&mut buf, 0).unwrap();
            let new_sectors = buf.chunks(SECTOR_BYTES).take_while(|s| s[0] == 2).count();
            assert!(buf[new_sectors * SECTOR_BYTES..].iter().all(|&b| b == 1));
            seen.insert(new_sectors);
        }
        assert_eq!(seen.len(), 5, "every tear point from 0 to 4 sectors occurs");
    }

    #[test]
    fn fail_after_stops_every_operation() {
        let disk = SimDisk::new();
        let f = disk.open("a").unwrap();
        disk.fail_after(1);
        f.write_all_at(b"x", 0).unwrap();
        assert!(f.sync_data().is_err());
        assert!(disk.open("b").is_err());
    }
}
