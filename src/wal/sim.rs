//! The simulated disk for crash tests: keeps what was synced apart from what was only written,
//! and at a crash loses unsynced writes, tears them at sector granularity, and loses directory
//! operations that were not followed by a directory sync.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::disk::{Disk, DiskFile};

/// Granularity at which an interrupted write tears.
pub const SECTOR_BYTES: usize = 512;

#[derive(Default)]
struct Inode {
    /// Contents as of the last fdatasync.
    durable: Vec<u8>,
    /// Contents as the running process sees them.
    volatile: Vec<u8>,
    /// Writes since the last fdatasync, oldest first: (offset, bytes).
    unsynced: Vec<(u64, Vec<u8>)>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, usize),
    Unlink(PathBuf),
}

#[derive(Default)]
struct State {
    inodes: Vec<Inode>,
    /// Names as the running process sees them.
    names: BTreeMap<PathBuf, usize>,
    /// Names as of the last directory sync.
    durable_names: BTreeMap<PathBuf, usize>,
    /// Directory operations since the last directory sync, oldest first.
    unsynced_ops: Vec<DirOp>,
    /// Set by `crash`: every later operation fails, like a process that no longer exists.
    crashed: bool,
    fdatasyncs: u64,
    /// Operations left until an armed crash, and its seed.
    armed_crash: Option<(u64, u64)>,
    crashed_image: Option<Arc<Mutex<State>>>,
}

/// Marks `old` crashed and returns what survives of it: synced data, plus each unsynced write
/// either lost, persisted whole, or torn (a random subset of its sectors); synced directory
/// state plus a random prefix of the unsynced directory operations.
fn crash_image(old: &mut State, seed: u64) -> State {
    let mut rng = SplitMix64(seed);
    old.crashed = true;
    let mut names = old.durable_names.clone();
    let kept_ops = rng.below(old.unsynced_ops.len() as u64 + 1) as usize;
    for op in &old.unsynced_ops[..kept_ops] {
        match op {
            DirOp::Link(path, ino) => {
                names.insert(path.clone(), *ino);
            }
            DirOp::Unlink(path) => {
                names.remove(path);
            }
        }
    }
    let inodes = old
        .inodes
        .iter()
        .map(|inode| {
            let mut data = inode.durable.clone();
            for (offset, bytes) in &inode.unsynced {
                match rng.below(3) {
                    0 => {}
                    1 => apply_write(&mut data, *offset, bytes),
                    _ => {
                        for (i, sector) in bytes.chunks(SECTOR_BYTES).enumerate() {
                            if rng.below(2) == 0 {
                                apply_write(&mut data, *offset + (i * SECTOR_BYTES) as u64, sector);
                            }
                        }
                    }
                }
            }
            Inode {
                durable: data.clone(),
                volatile: data,
                unsynced: Vec::new(),
            }
        })
        .collect();
    State {
        inodes,
        names: names.clone(),
        durable_names: names,
        ..State::default()
    }
}

/// An in-memory disk shared by clones. See the module doc for its crash model.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDisk").finish_non_exhaustive()
    }
}

/// The crash's source of randomness (no `rand` in the library): SplitMix64.
struct SplitMix64(u64);

impl SplitMix64 {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    }
}

fn crashed() -> io::Error {
    io::Error::other("simulated disk: crashed")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("simulated disk: {} not found", path.display()),
    )
}

fn apply_write(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset as usize..end].copy_from_slice(bytes);
}

impl SimDisk {
    pub fn new() -> Self {
        SimDisk::default()
    }

    /// Number of fdatasyncs served so far.
    pub fn fdatasyncs(&self) -> u64 {
        self.state.lock().fdatasyncs
    }

    /// Simulates power loss. This disk fails every later operation; the returned disk holds
    /// what survived: synced data, plus each unsynced write either lost, persisted whole, or torn
    /// (a random subset of its sectors), chosen by a PRNG seeded with `seed`; synced directory state plus a random
    /// prefix of the unsynced directory operations.
    #[must_use = "the crashed image is the returned disk"]
    pub fn crash(&self, seed: u64) -> SimDisk {
        let mut state = self.state.lock();
        let image = crash_image(&mut state, seed);
        SimDisk {
            state: Arc::new(Mutex::new(image)),
        }
    }

    /// Arms a crash: the `ops`-th operation from now (1 = the next one) fails, and so does every
    /// later one, as if power was lost just before it; [`SimDisk::crashed_image`] then returns
    /// what survived (as [`SimDisk::crash`] with `seed`).
    pub fn crash_at_op(&self, ops: u64, seed: u64) {
        assert!(ops > 0);
        self.state.lock().armed_crash = Some((ops, seed));
    }

    /// The disk as it survived an armed crash, once that crash has happened.
    pub fn crashed_image(&self) -> Option<SimDisk> {
        let state = self.state.lock();
        state.crashed_image.as_ref().map(|image| SimDisk {
            state: image.clone(),
        })
    }

    /// The visible contents of `path` (for assertions and for damaging files in tests).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.lock();
        state
            .names
            .get(path)
            .map(|&ino| state.inodes[ino].volatile.clone())
    }

    /// Overwrites the visible and the durable contents of `path` (to damage files in tests).
    pub fn write_file(&self, path: &Path, data: Vec<u8>) {
        let mut state = self.state.lock();
        let ino = *state.names.get(path).expect("file exists");
        state.inodes[ino] = Inode {
            durable: data.clone(),
            volatile: data,
            unsynced: Vec::new(),
        };
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.state.lock();
        if let Some((ops, seed)) = state.armed_crash {
            if ops == 1 {
                state.armed_crash = None;
                let image = crash_image(&mut state, seed);
                state.crashed_image = Some(Arc::new(Mutex::new(image)));
            } else {
                state.armed_crash = Some((ops - 1, seed));
            }
        }
        if state.crashed {
            return Err(crashed());
        }
        f(&mut state)
    }
}

/// An open file of a [`SimDisk`].
pub struct SimFile {
    disk: SimDisk,
    ino: usize,
}

impl Disk for SimDisk {
    type File = SimFile;

    async fn create(&self, path: &Path, len_bytes: u64) -> io::Result<SimFile> {
        let ino = self.with(|s| {
            let ino = s.inodes.len();
            s.inodes.push(Inode {
                volatile: vec![0; len_bytes as usize],
                ..Inode::default()
            });
            s.names.insert(path.to_path_buf(), ino);
            s.unsynced_ops.push(DirOp::Link(path.to_path_buf(), ino));
            Ok(ino)
        })?;
        Ok(SimFile {
            disk: self.clone(),
            ino,
        })
    }

    async fn open(&self, path: &Path) -> io::Result<SimFile> {
        let ino = self.with(|s| s.names.get(path).copied().ok_or_else(|| not_found(path)))?;
        Ok(SimFile {
            disk: self.clone(),
            ino,
        })
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.with(|s| {
            let ino = s.names.remove(from).ok_or_else(|| not_found(from))?;
            s.names.insert(to.to_path_buf(), ino);
            s.unsynced_ops.push(DirOp::Link(to.to_path_buf(), ino));
            s.unsynced_ops.push(DirOp::Unlink(from.to_path_buf()));
            Ok(())
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.with(|s| {
            s.names.remove(path).ok_or_else(|| not_found(path))?;
            s.unsynced_ops.push(DirOp::Unlink(path.to_path_buf()));
            Ok(())
        })
    }

    async fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        self.with(|s| {
            s.durable_names = s.names.clone();
            s.unsynced_ops.clear();
            Ok(())
        })
    }

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.with(|_| Ok(()))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.with(|s| {
            Ok(s.names
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .cloned()
                .collect())
        })
    }
}

impl DiskFile for SimFile {
    type Buf = Vec<u8>;

    fn alloc(&self, len_bytes: usize) -> Vec<u8> {
        vec![0; len_bytes]
    }

    async fn write_at(&self, buf: Vec<u8>, offset: u64) -> io::Result<()> {
        self.disk.with(|s| {
            let inode = &mut s.inodes[self.ino];
            apply_write(&mut inode.volatile, offset, &buf);
            inode.unsynced.push((offset, buf));
            Ok(())
        })
    }

    async fn read_at(&self, offset: u64, len_bytes: usize) -> io::Result<Vec<u8>> {
        self.disk.with(|s| {
            let data = &s.inodes[self.ino].volatile;
            let start = (offset as usize).min(data.len());
            let end = (start + len_bytes).min(data.len());
            Ok(data[start..end].to_vec())
        })
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.disk.with(|s| {
            s.fdatasyncs += 1;
            let inode = &mut s.inodes[self.ino];
            inode.durable.clone_from(&inode.volatile);
            inode.unsynced.clear();
            Ok(())
        })
    }

    async fn len_bytes(&self) -> io::Result<u64> {
        self.disk
            .with(|s| Ok(s.inodes[self.ino].volatile.len() as u64))
    }

    async fn close(self) -> io::Result<()> {
        self.disk.with(|_| Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(f)
    }

    /// The crash model itself: synced data survives, unsynced data may not, an unsynced rename
    /// may be lost, and the dead disk refuses work.
    #[test]
    fn crash_keeps_synced_and_loses_or_tears_unsynced() {
        let dir = Path::new("/d");
        let (a, b) = (dir.join("a"), dir.join("b"));
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let disk = SimDisk::new();
            let file = run(disk.create(&a, 4096)).unwrap();
            run(file.write_at(vec![1; 4096], 0)).unwrap();
            run(file.fdatasync()).unwrap();
            run(disk.sync_dir(dir)).unwrap();
            run(file.write_at(vec![2; 4096], 0)).unwrap();
            run(disk.rename(&a, &b)).unwrap();
            let after = disk.crash(seed);
            assert!(
                run(file.fdatasync()).is_err(),
                "the crashed disk refuses work"
            );
            let path = if after.read_file(&b).is_some() {
                &b
            } else {
                &a
            };
            let data = after
                .read_file(path)
                .expect("the file survives under one name");
            assert_eq!(data.len(), 4096);
            for sector in data.chunks(SECTOR_BYTES) {
                assert!(
                    sector.iter().all(|&x| x == sector[0]) && (sector[0] == 1 || sector[0] == 2)
                );
            }
            let twos = data.chunks(SECTOR_BYTES).filter(|s| s[0] == 2).count();
            outcomes.insert((path == &b, twos == 0, twos == 8));
        }
        // Lost, whole and torn writes and both rename outcomes all happened.
        assert!(
            outcomes.iter().any(|o| o.1)
                && outcomes.iter().any(|o| o.2)
                && outcomes.iter().any(|o| !o.1 && !o.2)
        );
        assert!(outcomes.iter().any(|o| o.0) && outcomes.iter().any(|o| !o.0));
    }
}
