//! [`Media`]: the node's blob store, URL signer, allow-list and open uploads, and what turns
//! a staged upload into a stored one.

use std::sync::Arc;
use std::time::Duration;

use natter_media::{ImageError, ImageLimits, Processed};
use natter_media::{Sniffed, contradicts, sniff};
use natter_proto::{Attachment, Entry, ErrorCode, UserId};
use natter_store::{Collected, MediaRecord, NewMedia, NewThumbnail, Store};
use tokio::sync::{RwLock, Semaphore};

use super::policy::{TypeRefusal, decodable};
use super::sign::{Signer, Variant};
use super::upload::Uploads;
use super::{Blobs, Staged, TypePolicy, sha256_hex};
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::now_ms;

/// Longest an image may take to decode, scale and encode.
const DECODE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest file name kept, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 255;

pub(crate) struct Media {
    /// Where uploads are hashed, written and decoded: a runtime of its own, of
    /// `media_ingest_threads` threads, beside the one that routes messages.
    ingest: Ingest,
    pub(crate) blobs: Blobs,
    /// The node's upload bytes per second.
    pub(crate) pace: super::Pace,
    pub(crate) signer: Signer,
    pub(crate) policy: TypePolicy,
    pub(crate) uploads: Uploads,
    image_limits: ImageLimits,
    /// Images decoded at once (each holds its bytes and pixels, up to the decoder's cap):
    /// as many as there are ingest threads.
    decodes: Arc<Semaphore>,
    /// Held shared by an upload from recording its row to storing its object, and
    /// exclusively by a collection from deleting rows to deleting objects: a collection
    /// never deletes the object of a blob an upload on this node has just re-recorded.
    collecting: RwLock<()>,
}

impl Media {
    pub(crate) async fn open(cfg: &Config, secret: &[u8]) -> anyhow::Result<Media> {
        let blobs = match &cfg.media_url {
            None => Blobs::local(&cfg.media_dir())?,
            Some(url) => Blobs::with_store(s3(url, &cfg.media_s3)?, &cfg.media_dir())?,
        };
        let threads = cfg.limits.media_ingest_threads;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .max_blocking_threads(threads.max(4))
            .thread_name("natter-ingest")
            .enable_all()
            .build()?;
        Ok(Media {
            ingest: Ingest(Some(runtime)),
            blobs,
            pace: super::Pace::new(cfg.limits.media_ingest_bytes_per_sec),
            signer: Signer::new(secret, cfg.limits.media_url_ttl_secs),
            policy: TypePolicy::parse(&cfg.media_types, &cfg.limits)?,
            uploads: Uploads::default(),
            image_limits: ImageLimits::default(),
            decodes: Arc::new(Semaphore::new(threads)),
            collecting: RwLock::new(()),
        })
    }

    /// Checks a staged upload's bytes (type, size, image) and stores it for `owner`.
    pub(crate) async fn store(
        &self,
        store: &dyn Store,
        owner: UserId,
        staged: Staged,
        declared: Option<&str>,
        name: Option<String>,
        quota_bytes: u64,
    ) -> ApiResult<MediaRecord> {
        let sniffed = self.admit(&staged.head, declared, staged.size)?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let mut media = NewMedia {
            id: id.clone(),
            owner,
            sha256: staged.sha256.clone(),
            size: staged.size,
            content_type: sniffed.content_type.to_owned(),
            name,
            width: None,
            height: None,
            placeholder: None,
            thumbnail: None,
            quota_bytes,
        };
        let image =
            if decodable(&sniffed) { Some(self.process(&staged, &sniffed).await?) } else { None };
        let mut thumb_bytes = None;
        if let Some(image) = &image {
            media.sha256 = image.sha256.clone();
            media.size = image.processed.bytes.len() as u64;
            media.width = Some(image.processed.width);
            media.height = Some(image.processed.height);
            media.placeholder = Some(image.processed.placeholder.clone());
            if let (Some(t), Some(sha256)) = (&image.processed.thumbnail, &image.thumb_sha256) {
                media.thumbnail = Some(NewThumbnail {
                    sha256: sha256.clone(),
                    size: t.bytes.len() as u64,
                    width: t.width,
                    height: t.height,
                });
                thumb_bytes = Some(t.bytes.clone());
            }
        }
        let thumb_sha = media.thumbnail.as_ref().map(|t| t.sha256.clone());
        {
            let _shared = self.collecting.read().await;
            store.create_media(media).await?;
            let stored = match image {
                Some(image) => self
                    .blobs
                    .put_bytes(&image.sha256, image.processed.bytes)
                    .await
                    .map_err(anyhow::Error::from),
                None => self.blobs.put_staged(&staged).await,
            };
            let thumb = match (thumb_sha, thumb_bytes) {
                (Some(sha), Some(bytes)) => {
                    self.blobs.put_bytes(&sha, bytes).await.map_err(anyhow::Error::from)
                }
                _ => Ok(()),
            };
            if let Err(err) = stored.and(thumb) {
                // The row stays until collected as never attached; the client retries.
                tracing::error!(error = %err, "cannot store an upload's blob");
                return Err(ApiError::new(ErrorCode::Unavailable, "blob storage failed; retry"));
            }
        }
        store.media(&id).await?.ok_or_else(|| ApiError::new(ErrorCode::Internal, "upload vanished"))
    }

    /// Checks an upload's first bytes against its declared type and the allow-list, and its
    /// size against its type's cap.
    pub(crate) fn admit(
        &self,
        head: &[u8],
        declared: Option<&str>,
        size: u64,
    ) -> ApiResult<Sniffed> {
        let sniffed = sniff(head);
        if let Some(declared) = declared
            && contradicts(declared, &sniffed)
        {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("the bytes are {}, not the {declared} declared", sniffed.content_type),
            ));
        }
        match self.policy.check(&sniffed, size) {
            Ok(()) => Ok(sniffed),
            Err(TypeRefusal::NotAllowed) => Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("uploads of type {} are not allowed", sniffed.content_type),
            )),
            Err(TypeRefusal::TooLarge { cap }) => Err(ApiError::too_large(format!(
                "uploads of type {} may have at most {cap} bytes",
                sniffed.content_type
            ))),
        }
    }

    /// Runs `work` (staging an upload: hashing and writing) on the ingest runtime.
    pub(crate) async fn ingest<F>(&self, work: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.ingest.handle().spawn(work).await {
            Ok(out) => out,
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }

    /// Decodes an image on the ingest runtime's blocking threads, as many at once as it has
    /// threads, within `DECODE_TIMEOUT`; hashes what it makes there too.
    async fn process(&self, staged: &Staged, sniffed: &Sniffed) -> ApiResult<Image> {
        let permit =
            self.decodes.clone().acquire_owned().await.expect("the semaphore is never closed");
        let bytes = self.blobs.read_staged(staged).await.map_err(|err| {
            tracing::error!(error = %err, "cannot read a staged upload");
            ApiError::new(ErrorCode::Internal, "internal error")
        })?;
        let (content_type, limits) = (sniffed.content_type, self.image_limits.clone());
        let job = self.ingest.handle().spawn_blocking(move || {
            // The permit goes with the work: a decode that outlives its timeout still counts.
            let _permit = permit;
            let processed = natter_media::process(&bytes, content_type, &limits)?;
            let sha256 = sha256_hex(&processed.bytes);
            let thumb_sha256 = processed.thumbnail.as_ref().map(|t| sha256_hex(&t.bytes));
            Ok::<_, ImageError>(Image { processed, sha256, thumb_sha256 })
        });
        match tokio::time::timeout(DECODE_TIMEOUT, job).await {
            Ok(Ok(Ok(image))) => Ok(image),
            Ok(Ok(Err(err @ ImageError::TooManyPixels { .. }))) => {
                Err(ApiError::too_large(err.to_string()))
            }
            Ok(Ok(Err(err))) => {
                Err(ApiError::new(ErrorCode::UnsupportedMediaType, err.to_string()))
            }
            Ok(Err(_)) => Err(ApiError::new(ErrorCode::Internal, "internal error")),
            Err(_) => Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the image took too long to process",
            )),
        }
    }

    /// The expiry of a URL signed now.
    pub(crate) fn url_expiry(&self) -> i64 {
        self.signer.expiry(now_ms() / 1000)
    }

    /// The attachment with URLs signed for `reader`, valid until `expires`.
    pub(crate) fn sign(&self, attachment: &mut Attachment, reader: UserId, expires: i64) {
        attachment.url = Some(self.signer.url(&attachment.id, Variant::Original, reader, expires));
        attachment.thumbnail_url = attachment
            .thumbnail
            .map(|_| self.signer.url(&attachment.id, Variant::Thumbnail, reader, expires));
    }

    /// Signs a profile's avatar URLs. They are signed for the avatar's owner, whose media it
    /// is: an avatar may be shown to anyone who may see the profile, so one URL (a capability
    /// that expires like any media URL) serves every reader, and one `profile` frame can go
    /// to all of them.
    pub(crate) fn sign_user(&self, user: &mut natter_proto::rest::User) {
        let Some(avatar) = user.avatar.as_mut() else { return };
        let expires = self.signer.expiry(now_ms() / 1000);
        avatar.url = Some(self.signer.url(&avatar.id, Variant::Original, user.user_id, expires));
        avatar.thumbnail_url = avatar
            .has_thumbnail
            .then(|| self.signer.url(&avatar.id, Variant::Thumbnail, user.user_id, expires));
    }

    /// Signs the avatar of a summary's direct peer.
    pub(crate) fn sign_summary(&self, summary: &mut natter_proto::ConversationSummary) {
        if let Some(peer) = summary.peer.as_mut() {
            self.sign_user(peer);
        }
    }

    /// Signs the attachments of `entries` for `reader`.
    pub(crate) fn sign_entries(&self, entries: &mut [Entry], reader: UserId) {
        let mut expires = None;
        for entry in entries {
            for attachment in entry.body.attachments_mut() {
                let expires = *expires.get_or_insert_with(|| self.signer.expiry(now_ms() / 1000));
                self.sign(attachment, reader, expires);
            }
        }
    }

    /// Deletes uploads never attached (made over `unattached_ttl` ago) and blobs nothing
    /// references, rows first, then objects.
    pub(crate) async fn collect(
        &self,
        store: &dyn Store,
        unattached_ttl: Duration,
    ) -> ApiResult<Collected> {
        self.uploads.expire();
        let _exclusive = self.collecting.write().await;
        let now = now_ms();
        let ttl = i64::try_from(unattached_ttl.as_millis()).unwrap_or(i64::MAX);
        // Every blob unreferenced now goes, those this very call marks orphaned included
        // (the store stamps them with its own, later, clock): on this node the lock holds
        // uploads off, so no grace period is needed.
        // Made `ttl` ago or earlier (the store deletes those made before the bound).
        let unattached_before = now.saturating_sub(ttl).saturating_add(1);
        let collected = store.collect_media(unattached_before, i64::MAX).await?;
        self.blobs.delete(&collected.blobs).await;
        if collected.media > 0 || !collected.blobs.is_empty() {
            tracing::info!(
                media = collected.media,
                blobs = collected.blobs.len(),
                "media collected"
            );
        }
        Ok(collected)
    }
}

/// A processed image and the hashes of what will be stored.
struct Image {
    processed: Processed,
    sha256: String,
    thumb_sha256: Option<String>,
}

/// The ingest runtime; dropped without waiting (a runtime may not block a runtime's thread
/// on its way out), its tasks ended where they stand.
struct Ingest(Option<tokio::runtime::Runtime>);

impl Ingest {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("the ingest runtime runs until dropped").handle()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// An S3-compatible store for `s3://bucket/prefix`, configured from `AWS_*` variables.
#[cfg(feature = "s3")]
fn s3(
    url: &str,
    settings: &crate::config::S3Settings,
) -> anyhow::Result<Arc<dyn object_store::ObjectStore>> {
    use anyhow::Context;
    let rest = url.strip_prefix("s3://").context("media_url must be s3://bucket[/prefix]")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    let endpoint = settings.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if let Some(endpoint) = endpoint {
        let http = endpoint.starts_with("http://");
        builder = builder.with_endpoint(endpoint).with_allow_http(http);
    }
    if let Some(region) = &settings.region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &settings.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &settings.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    let s3: Arc<dyn object_store::ObjectStore> =
        Arc::new(builder.build().context("configuring S3")?);
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(s3);
    }
    Ok(Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)))
}

#[cfg(not(feature = "s3"))]
fn s3(
    _url: &str,
    _: &crate::config::S3Settings,
) -> anyhow::Result<Arc<dyn object_store::ObjectStore>> {
    anyhow::bail!("this natter was built without the s3 feature")
}
