//! `natter backup DEST` and `natter restore SRC`: a consistent copy of a running single node
//! (its SQLite store, the media objects the store refers to, the URL-signing key), and the
//! checks a copy passes before it becomes a node's data directory.
//!
//! A backup directory holds `natter.db` (one file, no WAL), `media/blobs/<aa>/<sha256>`,
//! `media.key` when the node made its own, and `backup.json` (what was copied). The store is
//! copied first, as of one commit; the objects it refers to are copied after it, and since
//! objects are content-addressed and never change, and are deleted only a grace period after
//! nothing refers to them, every object the copy refers to is still there to be copied.
//! PostgreSQL nodes are backed up with PostgreSQL's tools (docs/operations.md).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::Config;

/// `backup.json`: what a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// The version of Natter that took it.
    pub natter_version: String,
    /// When the copy of the store was taken, in milliseconds since the epoch.
    pub taken_at_ms: i64,
    pub schema_version: u32,
    pub users: u64,
    pub conversations: u64,
    pub entries: u64,
    /// Media objects copied, and their bytes.
    pub blobs: u64,
    pub blob_bytes: u64,
    /// `local` (copied), or `s3` (objects stay in the bucket, which keeps its own copies).
    pub media: String,
    /// Whether the node's own URL-signing key was copied (not when `media_secret` is set).
    pub signing_key: bool,
}

const DB: &str = "natter.db";
const KEY: &str = "media.key";
const MANIFEST: &str = "backup.json";

/// Where the object `sha256` lives under `root`; an error for anything but 64 hex digits
/// (the store's names, never a path of their own).
fn blob_path(root: &Path, sha256: &str) -> anyhow::Result<PathBuf> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{sha256:?} is not a media object's SHA-256");
    }
    Ok(root.join("blobs").join(&sha256[..2]).join(sha256))
}

/// Copies `src` to `dst` and makes the copy and its directory durable.
fn copy_durably(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let dir = dst.parent().expect("a copy's path has a parent");
    std::fs::create_dir_all(dir)?;
    std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    std::fs::File::open(dst)?.sync_all()?;
    sync_dir(dir)?;
    Ok(())
}

/// Takes a backup of the node `cfg` describes into `dest` (created; it must not hold
/// anything yet) while the node runs.
pub fn backup(cfg: &Config, dest: &Path) -> anyhow::Result<Manifest> {
    if cfg.database_url.is_some() {
        bail!(
            "this node's store is PostgreSQL: back it up with pg_dump or a base backup \
             (docs/operations.md, \"Backups\")"
        );
    }
    let db = cfg.data_dir.join(DB);
    if !db.is_file() {
        bail!("no store at {}", db.display());
    }
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    if std::fs::read_dir(dest)?.next().is_some() {
        bail!("{} is not empty", dest.display());
    }
    let taken_at_ms = now_ms();
    let summary = natter_store::sqlite::backup::backup(&db, &dest.join(DB))?;
    let (mut blobs, mut blob_bytes) = (0, 0);
    let media = if cfg.media_url.is_some() { "s3" } else { "local" };
    if media == "local" {
        let (from, to) = (cfg.media_dir(), dest.join("media"));
        for (sha256, size) in &summary.blobs {
            copy_durably(&blob_path(&from, sha256)?, &blob_path(&to, sha256)?)?;
            blobs += 1;
            blob_bytes += size;
        }
    }
    let signing_key = cfg.media_secret.is_none() && cfg.data_dir.join(KEY).is_file();
    if signing_key {
        copy_durably(&cfg.data_dir.join(KEY), &dest.join(KEY))?;
    }
    let manifest = Manifest {
        natter_version: env!("CARGO_PKG_VERSION").to_owned(),
        taken_at_ms,
        schema_version: summary.schema_version,
        users: summary.users,
        conversations: summary.conversations,
        entries: summary.entries,
        blobs,
        blob_bytes,
        media: media.to_owned(),
        signing_key,
    };
    std::fs::write(dest.join(MANIFEST), serde_json::to_vec_pretty(&manifest)?)?;
    sync_dir(dest)?;
    Ok(manifest)
}

/// Checks the backup in `src`: its store (integrity, schema, contiguous logs), then that
/// every media object it refers to is there with its size and hash. Unless `check_only`,
/// then copies it into `cfg`'s data directory, which must not hold a store yet.
pub fn restore(cfg: &Config, src: &Path, check_only: bool) -> anyhow::Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(src.join(MANIFEST))
            .with_context(|| format!("{} is not a backup (no {MANIFEST})", src.display()))?,
    )?;
    let summary = natter_store::sqlite::backup::check(&src.join(DB))?;
    if (summary.users, summary.conversations, summary.entries)
        != (manifest.users, manifest.conversations, manifest.entries)
    {
        bail!("{}: the store does not hold what {MANIFEST} says it does", src.display());
    }
    let target_media = if cfg.media_url.is_some() { "s3" } else { "local" };
    if !check_only && manifest.media != target_media {
        bail!(
            "the backup's media are {} and this configuration keeps them {target_media}: \
             restore with the media setting the backup was taken with",
            manifest.media
        );
    }
    if manifest.signing_key && !src.join(KEY).is_file() {
        bail!("{} is missing: the backup names it", src.join(KEY).display());
    }
    if manifest.media == "local" {
        let root = src.join("media");
        for (sha256, size) in &summary.blobs {
            let path = blob_path(&root, sha256)?;
            let (got_size, got_sha) =
                hash_file(&path).with_context(|| format!("media object {sha256} is missing"))?;
            if got_size != *size || got_sha != *sha256 {
                bail!("media object {} is damaged", path.display());
            }
        }
    }
    if check_only {
        return Ok(manifest);
    }
    if cfg.database_url.is_some() {
        bail!("a backup restores an embedded store: this configuration names PostgreSQL");
    }
    let db = cfg.data_dir.join(DB);
    if db.exists() {
        bail!(
            "{} already holds a store: restore into a new data directory",
            cfg.data_dir.display()
        );
    }
    std::fs::create_dir_all(&cfg.data_dir)?;
    if manifest.media == "local" {
        let (from, to) = (src.join("media"), cfg.media_dir());
        for (sha256, _) in &summary.blobs {
            copy_durably(&blob_path(&from, sha256)?, &blob_path(&to, sha256)?)?;
        }
    }
    if manifest.signing_key && cfg.media_secret.is_none() {
        copy_durably(&src.join(KEY), &cfg.data_dir.join(KEY))?;
    }
    // The store last, through a temporary name: a data directory with a store is a whole one.
    let partial = cfg.data_dir.join("natter.db.restoring");
    std::fs::copy(src.join(DB), &partial)?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, &db)?;
    sync_dir(&cfg.data_dir)?;
    Ok(manifest)
}

fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let (mut hasher, mut size, mut buf) = (Sha256::new(), 0u64, vec![0u8; 256 * 1024]);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((size, crate::media::hex(&hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
