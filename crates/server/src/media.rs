//! Media: uploads on their own HTTP path, content-addressed blobs behind `object_store`, and
//! signed download URLs. An upload streams to a staging file in the data directory while it
//! is hashed (never held in memory), is sniffed from its first bytes, and is then copied
//! into the blob store under its SHA-256 (`blobs/ab/abcdef…`), so equal bytes are stored
//! once. The store's `media` rows say who uploaded what; `media_refs` say which messages
//! carry it, and so who may download it.

pub(crate) mod policy;
pub(crate) mod service;
pub(crate) mod sign;
pub(crate) mod upload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) use policy::TypePolicy;
pub(crate) use service::Media;

/// The first bytes of an upload that sniffing looks at.
pub(crate) const SNIFF_BYTES: usize = 8 * 1024;

/// Parts of a multipart copy into a remote blob store (S3's smallest part is 5 MiB).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Reads from the staging file during a copy.
const READ_CHUNK: usize = 1024 * 1024;
/// Copies into a remote store at once: each holds up to two parts in memory.
const COPIES: usize = 4;
/// Every this many bytes of an upload, the kernel is told to write them out now and to drop
/// them from the page cache (`posix_fadvise` `DONTNEED`: writeback starts, nobody waits, no
/// device flush). Left to the kernel, gigabytes of uploads pile up as dirty pages whose
/// writeback storms stall the store's commits (an fsync waits behind them) by hundreds of
/// milliseconds; synced outright, every few MiB would flush the device under each commit.
/// Each append ends with one `fdatasync`, so what `Upload-Offset` says is durable.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;
/// Reads of a download from the local file system (object_store's own are 8 KiB).
const SERVE_CHUNK: usize = 256 * 1024;

/// The bytes of a download as they are read.
pub(crate) type ByteStream =
    futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>;

/// Where blobs live and where uploads are staged.
pub(crate) struct Blobs {
    objects: Arc<dyn ObjectStore>,
    /// For blobs on the local file system: their root, so that a staged upload is renamed
    /// into place instead of copied.
    local_root: Option<PathBuf>,
    staging: PathBuf,
    copies: tokio::sync::Semaphore,
}

/// An upload being written to its staging file: what has arrived, its running hash and
/// first bytes. Dropped unfinished, its file goes.
pub(crate) struct Partial {
    path: PathBuf,
    size: u64,
    hasher: Sha256,
    head: Vec<u8>,
}

/// An upload written whole to its staging file: its size, hash and first bytes.
pub(crate) struct Staged {
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) head: Vec<u8>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        // The staging file is only a step: whatever happens to the upload, it goes (unless
        // it was renamed into the blob store).
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Why staging stopped.
#[derive(Debug)]
pub(crate) enum StageError {
    /// More than the cap arrived.
    TooLarge,
    /// The client's body broke off (or timed out).
    Body(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for StageError {
    fn from(err: std::io::Error) -> StageError {
        StageError::Io(err)
    }
}

impl Partial {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn head(&self) -> &[u8] {
        &self.head
    }

    /// Appends `body` to the staging file, refusing to grow past `cap`, at the pace `pace`
    /// allows. Whatever arrived before an error is kept (flushed, and counted in `size`), so
    /// a broken upload resumes from there.
    pub(crate) async fn append<S, E>(
        &mut self,
        mut body: S,
        cap: u64,
        pace: &Pace,
    ) -> Result<(), StageError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut file = tokio::fs::OpenOptions::new().append(true).open(&self.path).await?;
        let mut unsynced = 0u64;
        let mut written_back = self.size;
        let res = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|err| StageError::Body(err.to_string()))?;
                if self.size + chunk.len() as u64 > cap {
                    return Err(StageError::TooLarge);
                }
                pace.take(chunk.len()).await;
                file.write_all(&chunk).await?;
                unsynced += chunk.len() as u64;
                self.size += chunk.len() as u64;
                if self.size - written_back >= WRITEBACK_EVERY {
                    file.flush().await?;
                    write_back(&file, written_back, self.size - written_back);
                    written_back = self.size;
                }
                if self.head.len() < SNIFF_BYTES {
                    let take = (SNIFF_BYTES - self.head.len()).min(chunk.len());
                    self.head.extend_from_slice(&chunk[..take]);
                }
                self.hasher.update(&chunk);
            }
            Ok(())
        }
        .await;
        let mut flushed = file.flush().await;
        if flushed.is_ok() && unsynced > 0 {
            flushed = file.sync_data().await;
        }
        if flushed.is_err() || matches!(res, Err(StageError::Io(_))) {
            // A write that failed half-way: cut the file back to what was counted.
            file.set_len(self.size).await?;
        }
        res?;
        flushed?;
        Ok(())
    }

    /// The whole upload, hashed.
    pub(crate) fn finish(mut self) -> Staged {
        let path = std::mem::take(&mut self.path);
        let hasher = std::mem::take(&mut self.hasher);
        Staged {
            path,
            size: self.size,
            sha256: hex(&hasher.finalize()),
            head: std::mem::take(&mut self.head),
        }
    }
}

impl Blobs {
    /// Blobs in `<media_dir>/blobs`, staging in `<media_dir>/staging`.
    pub(crate) fn local(media_dir: &Path) -> anyhow::Result<Blobs> {
        let root = media_dir.join("blobs");
        std::fs::create_dir_all(&root)?;
        let objects = object_store::local::LocalFileSystem::new_with_prefix(&root)?;
        let mut blobs = Blobs::with_store(Arc::new(objects), media_dir)?;
        blobs.local_root = Some(root);
        Ok(blobs)
    }

    /// Blobs in `objects`, staging in `<media_dir>/staging`.
    pub(crate) fn with_store(
        objects: Arc<dyn ObjectStore>,
        media_dir: &Path,
    ) -> anyhow::Result<Blobs> {
        let staging = media_dir.join("staging");
        std::fs::create_dir_all(&staging)?;
        // Staging files of a previous run are uploads that never completed.
        for entry in std::fs::read_dir(&staging)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let copies = tokio::sync::Semaphore::new(COPIES);
        Ok(Blobs { objects, local_root: None, staging, copies })
    }

    pub(crate) fn key(sha256: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{sha256}", &sha256[..2]))
    }

    /// A new, empty staging file.
    pub(crate) async fn partial(&self) -> std::io::Result<Partial> {
        let path = self.staging.join(uuid::Uuid::now_v7().simple().to_string());
        tokio::fs::File::create(&path).await?;
        Ok(Partial { path, size: 0, hasher: Sha256::new(), head: Vec::new() })
    }

    /// Streams `body` to a new staging file, hashing as it goes, refusing more than `cap`.
    #[cfg(test)]
    pub(crate) async fn stage<S, E>(&self, body: S, cap: u64) -> Result<Staged, StageError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut partial = self.partial().await?;
        partial.append(body, cap, &Pace::default()).await?;
        Ok(partial.finish())
    }

    /// Stores bytes already in memory (processed images, thumbnails) under `sha256`.
    pub(crate) async fn put_bytes(&self, sha256: &str, bytes: Vec<u8>) -> object_store::Result<()> {
        let key = Blobs::key(sha256);
        if self.objects.head(&key).await.is_err() {
            self.objects.put(&key, PutPayload::from(bytes)).await?;
        }
        Ok(())
    }

    /// Moves a staged upload into the blob store under its hash, unless those bytes are
    /// stored already: on the local file system a rename, elsewhere a multipart copy of
    /// `PART_BYTES` parts, at most `COPIES` at once, so memory stays bounded.
    pub(crate) async fn put_staged(&self, staged: &Staged) -> anyhow::Result<()> {
        let key = Blobs::key(&staged.sha256);
        if self.objects.head(&key).await.is_ok() {
            return Ok(());
        }
        if let Some(root) = &self.local_root {
            let dest = root.join(key.as_ref());
            if let Some(dir) = dest.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            tokio::fs::rename(&staged.path, &dest).await?;
            // The rename itself made durable: the directory entry.
            if let Some(dir) = dest.parent() {
                tokio::fs::File::open(dir).await?.sync_all().await?;
            }
            return Ok(());
        }
        let _copy = self.copies.acquire().await.expect("the semaphore is never closed");
        let upload = self.objects.put_multipart(&key).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let copied = async {
            let mut file = tokio::fs::File::open(&staged.path).await?;
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return anyhow::Ok(());
                }
                writer.wait_for_capacity(2).await?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        match copied {
            Ok(()) => writer.finish().await.map(|_| ()).map_err(Into::into),
            Err(err) => {
                // Leave no half-made multipart upload behind in the bucket.
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, "cannot abort a multipart copy");
                }
                Err(err)
            }
        }
    }

    /// Streams `range` of the blob `sha256` (all of it without one).
    pub(crate) async fn read(
        &self,
        sha256: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> object_store::Result<ByteStream> {
        let key = Blobs::key(sha256);
        if let Some(root) = &self.local_root {
            let path = root.join(key.as_ref());
            let not_found = |source: std::io::Error| object_store::Error::NotFound {
                path: key.to_string(),
                source: Box::new(source),
            };
            let mut file = tokio::fs::File::open(&path).await.map_err(not_found)?;
            let len = file.metadata().await.map_err(not_found)?.len();
            let range = range.unwrap_or(0..len);
            tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(range.start))
                .await
                .map_err(not_found)?;
            let reader = file.take(range.end.min(len).saturating_sub(range.start));
            return Ok(tokio_util::io::ReaderStream::with_capacity(reader, SERVE_CHUNK).boxed());
        }
        let options = object_store::GetOptions {
            range: range.map(object_store::GetRange::Bounded),
            ..object_store::GetOptions::default()
        };
        let got = self.objects.get_opts(&key, options).await?;
        Ok(got.into_stream().map(|r| r.map_err(std::io::Error::other)).boxed())
    }

    /// A whole blob in memory (thumbnails).
    pub(crate) async fn read_all(&self, sha256: &str) -> object_store::Result<bytes::Bytes> {
        self.objects.get(&Blobs::key(sha256)).await?.bytes().await
    }

    /// Reads a whole staged file (images, whose size cap keeps this small).
    pub(crate) async fn read_staged(&self, staged: &Staged) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(&staged.path).await
    }

    #[cfg(test)]
    pub(crate) fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// Deletes the objects of blobs nothing references any more.
    pub(crate) async fn delete(&self, shas: &[String]) {
        for sha in shas {
            if let Err(err) = self.objects.delete(&Blobs::key(sha)).await
                && !matches!(err, object_store::Error::NotFound { .. })
            {
                tracing::warn!(sha256 = %sha, error = %err, "cannot delete blob");
            }
        }
    }
}

/// The node's budget of upload bytes per second (`media_ingest_bytes_per_sec`), in KiB
/// cells of a GCRA bucket holding one second's worth; `None`: no cap.
#[derive(Clone, Default)]
pub(crate) struct Pace(Option<(Arc<governor::DefaultDirectRateLimiter>, u32)>);

impl Pace {
    pub(crate) fn new(bytes_per_sec: u64) -> Pace {
        let kib = u32::try_from(bytes_per_sec / 1024).unwrap_or(u32::MAX);
        let Some(per_sec) = std::num::NonZeroU32::new(kib) else { return Pace(None) };
        let quota = governor::Quota::per_second(per_sec);
        Pace(Some((Arc::new(governor::RateLimiter::direct(quota)), per_sec.get())))
    }

    /// Waits until `bytes` more may be written.
    async fn take(&self, bytes: usize) {
        let Some((limiter, burst)) = &self.0 else { return };
        let mut kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        while kib > 0 {
            // A burst is one second's worth; a larger chunk waits in parts.
            let n = std::num::NonZeroU32::new(kib.min(*burst)).expect("positive");
            let _ = limiter.until_n_ready(n).await;
            kib -= n.get();
        }
    }
}

/// Starts writeback of `len` bytes at `offset` and drops them from the page cache.
fn write_back(file: &tokio::fs::File, offset: u64, len: u64) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    if let Err(err) = posix_fadvise(file, offset, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED) {
        tracing::debug!(error = %err, "posix_fadvise failed");
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The URL-signing key: the configured one, or (single node) one made once and kept in
/// `<data_dir>/media.key`, readable only by the server's user.
pub(crate) fn load_secret(media_secret: Option<&str>, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = media_secret {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join("media.key");
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => anyhow::bail!("{} is shorter than 32 bytes", path.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err.into()),
    }
    let mut key = vec![0u8; 48];
    getrandom::fill(&mut key).map_err(|err| anyhow::anyhow!("no OS random source: {err}"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&path)?, &key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(
        parts: &[&'static [u8]],
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts.iter().map(|p| Ok(bytes::Bytes::from_static(p))).collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn staged_uploads_are_hashed_capped_and_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path()).unwrap();
        let staged = blobs.stage(body(&[b"hello ", b"world"]), 100).await.unwrap();
        assert_eq!(staged.size, 11);
        assert_eq!(staged.head, b"hello world");
        // sha256("hello world")
        assert_eq!(
            staged.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        blobs.put_staged(&staged).await.unwrap();
        let mut again = blobs.partial().await.unwrap();
        let pace = Pace::new(1 << 20);
        again.append(body(&[b"hello"]), 100, &pace).await.unwrap();
        again.append(body(&[b" world"]), 100, &pace).await.unwrap();
        assert!(matches!(again.append(body(&[b"!!"]), 12, &pace).await, Err(StageError::TooLarge)));
        assert_eq!(again.size(), 11, "a refused chunk is not counted");
        let again = again.finish();
        assert_eq!(again.sha256, staged.sha256, "appended in parts, the same hash");
        blobs.put_staged(&again).await.unwrap();
        let stored = blobs.objects().get(&Blobs::key(&staged.sha256)).await.unwrap();
        assert_eq!(stored.bytes().await.unwrap().as_ref(), b"hello world");
        let (path, again_path) = (staged.path.clone(), again.path.clone());
        drop((staged, again));
        assert!(!path.exists() && !again_path.exists(), "staging files are removed");
        let files: Vec<_> = walk(&dir.path().join("blobs"));
        assert_eq!(files.len(), 1, "one blob for equal bytes: {files:?}");

        assert!(matches!(
            blobs.stage(body(&[b"0123456789", b"x"]), 10).await,
            Err(StageError::TooLarge)
        ));
    }

    #[test]
    fn a_made_key_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_secret(None, dir.path()).unwrap();
        assert!(key.len() >= 32);
        assert_eq!(load_secret(None, dir.path()).unwrap(), key);
        assert_eq!(load_secret(Some("configured"), dir.path()).unwrap(), b"configured");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
        }
        out
    }
}
