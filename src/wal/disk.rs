//! The disk seam: the `Disk`/`DiskFile` traits the writer does all its I/O through, and the real
//! implementation on glommio's `DmaFile` (O_DIRECT, io_uring). The simulated disk is in `sim`.

use std::io;
use std::path::{Path, PathBuf};

/// Filesystem operations of the WAL. Futures are `!Send`: they run on the writer's executor.
#[allow(async_fn_in_trait)] // single-threaded executor: callers never need `Send` futures
pub trait Disk: Clone + 'static {
    type File: DiskFile;

    /// Creates (or truncates) `path` and preallocates it to `len_bytes` of zeros. The real disk
    /// writes the zeros and fdatasyncs them (blocks allocated and written, not merely reserved),
    /// so later writes inside the file change no filesystem metadata and their fdatasync flushes
    /// data only.
    async fn create(&self, path: &Path, len_bytes: u64) -> io::Result<Self::File>;
    /// Opens an existing file for reading and writing.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    async fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Paths of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
}

/// One open file. Writes and reads are block-aligned (`format::BLOCK_BYTES`) in offset and length.
#[allow(async_fn_in_trait)]
pub trait DiskFile: 'static {
    /// A buffer suitable for `write_at` (aligned memory for O_DIRECT).
    type Buf: AsMut<[u8]> + AsRef<[u8]>;

    /// A zeroed buffer of exactly `len_bytes`.
    fn alloc(&self, len_bytes: usize) -> Self::Buf;
    /// Writes the whole buffer at `offset`; short writes are errors.
    async fn write_at(&self, buf: Self::Buf, offset: u64) -> io::Result<()>;
    /// Reads up to `len_bytes` at `offset` (fewer at end of file).
    async fn read_at(&self, offset: u64, len_bytes: usize) -> io::Result<Vec<u8>>;
    async fn fdatasync(&self) -> io::Result<()>;
    async fn len_bytes(&self) -> io::Result<u64>;
    /// Closes the file (dropping it also closes it, later).
    async fn close(self) -> io::Result<()>;
}

/// Zero-filling writes of `GlommioDisk::create` are issued in pieces of this size.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(ZERO_CHUNK_BYTES % super::format::BLOCK_BYTES == 0);

/// The real disk: glommio `DmaFile`s (O_DIRECT through io_uring). Must be used on a glommio
/// executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlommioDisk;

/// A glommio DMA buffer as a byte slice.
pub struct DmaBuf(glommio::io::DmaBuffer);

impl AsRef<[u8]> for DmaBuf {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl AsMut<[u8]> for DmaBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }
}

impl Disk for GlommioDisk {
    type File = glommio::io::DmaFile;

    async fn create(&self, path: &Path, len_bytes: u64) -> io::Result<Self::File> {
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(path)
            .await?;
        file.pre_allocate(len_bytes, false).await?;
        // fallocate leaves the extents *unwritten*: the first write into each block would convert
        // its extent, and every fdatasync after such a write would wait for a journal commit.
        // Writing real zeros now moves that cost here, off the commit path.
        let mut at = 0;
        while at < len_bytes {
            let len = ZERO_CHUNK_BYTES.min((len_bytes - at) as usize);
            let mut buf = file.alloc_dma_buffer(len);
            buf.as_bytes_mut().fill(0);
            let written = file.write_at(buf, at).await?;
            if written != len {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write while zero-filling: {written} of {len} bytes"),
                ));
            }
            at += len as u64;
        }
        file.fdatasync().await?;
        Ok(file)
    }

    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        Ok(glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await?)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        Ok(glommio::io::rename(from, to).await?)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        Ok(glommio::io::remove(path).await?)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = glommio::io::Directory::open(dir).await?;
        dir.sync().await?;
        Ok(dir.close().await?)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect()
    }
}

impl DiskFile for glommio::io::DmaFile {
    type Buf = DmaBuf;

    fn alloc(&self, len_bytes: usize) -> DmaBuf {
        let mut buf = self.alloc_dma_buffer(len_bytes);
        buf.as_bytes_mut().fill(0);
        DmaBuf(buf)
    }

    async fn write_at(&self, buf: DmaBuf, offset: u64) -> io::Result<()> {
        let len = buf.0.len();
        let written = glommio::io::DmaFile::write_at(self, buf.0, offset).await?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {len} bytes"),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, offset: u64, len_bytes: usize) -> io::Result<Vec<u8>> {
        let read = self.read_at_aligned(offset, len_bytes).await?;
        Ok(read.to_vec())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        Ok(glommio::io::DmaFile::fdatasync(self).await?)
    }

    async fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.file_size().await?)
    }

    async fn close(self) -> io::Result<()> {
        Ok(glommio::io::DmaFile::close(self).await?)
    }
}
