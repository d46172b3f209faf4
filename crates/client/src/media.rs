//! Media: uploads (whole, or resumable from a file across broken connections), fresh
//! download URLs, downloads. Attach an upload by its id in a message
//! ([`natter_proto::NewEntry::Message`]'s `attachments`).

use std::io::SeekFrom;
use std::path::Path;
use std::time::Duration;

use natter_proto::ErrorCode;
use natter_proto::rest::{NewUpload, UploadCreated, Uploaded};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::api::Api;
use crate::backoff::Backoff;
use crate::error::{Error, Result};

/// Bytes sent per `PATCH` of a resumable upload (and held in memory at once).
pub const UPLOAD_CHUNK: usize = 4 * 1024 * 1024;
/// Failed attempts in a row (no byte got through) before a resumable upload gives up.
const MAX_FAILURES: u32 = 8;

impl Api {
    /// `POST /v1/media`: uploads `bytes` in one request. The server sniffs the type from the
    /// bytes; `content_type`, if given, must not contradict them.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        content_type: Option<&str>,
        name: Option<&str>,
    ) -> Result<Uploaded> {
        let mut req = self.request(Method::POST, "/v1/media").body(bytes);
        if let Some(name) = name {
            req = req.query(&[("filename", name)]);
        }
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        self.parse(req.send().await.map_err(Error::Http)?).await
    }

    /// Uploads the file at `path` resumably: `POST /v1/media/uploads`, then `PATCH`es of
    /// [`UPLOAD_CHUNK`]; after a broken connection it asks the server where the upload
    /// stands (`HEAD`) and goes on from there, giving up after a few failures in a row.
    pub async fn upload_file(
        &self,
        path: &Path,
        content_type: Option<&str>,
        name: Option<&str>,
    ) -> Result<Uploaded> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|err| Error::Protocol(format!("{}: {err}", path.display())))?;
        let length = file.metadata().await.map_err(|err| Error::Protocol(err.to_string()))?.len();
        let new = NewUpload {
            length,
            content_type: content_type.map(str::to_owned),
            name: name.map(str::to_owned),
        };
        let created: UploadCreated = self
            .parse(
                self.request(Method::POST, "/v1/media/uploads")
                    .json(&new)
                    .send()
                    .await
                    .map_err(Error::Http)?,
            )
            .await?;
        let upload = format!("/v1/media/uploads/{}", created.id);
        let backoff = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            ..Backoff::default()
        };
        let mut offset = created.offset;
        let mut failures = 0;
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        loop {
            let n = usize::try_from((length - offset).min(UPLOAD_CHUNK as u64)).expect("a chunk");
            file.seek(SeekFrom::Start(offset))
                .await
                .map_err(|err| Error::Protocol(err.to_string()))?;
            file.read_exact(&mut buf[..n]).await.map_err(|err| Error::Protocol(err.to_string()))?;
            let sent = self
                .request(Method::PATCH, &upload)
                .header("Upload-Offset", offset)
                .header(reqwest::header::CONTENT_TYPE, "application/offset+octet-stream")
                .body(buf[..n].to_vec())
                .send()
                .await;
            let failed = match sent {
                Ok(res) if res.status() == reqwest::StatusCode::CREATED => {
                    return self.parse(res).await;
                }
                Ok(res) if res.status() == reqwest::StatusCode::NO_CONTENT => {
                    offset = upload_offset(&res)?;
                    failures = 0;
                    continue;
                }
                // A conflict: the offset moved (an earlier PATCH landed after all); ask.
                Ok(res) if res.status() == reqwest::StatusCode::CONFLICT => None,
                Ok(res) => return self.parse::<Uploaded>(res).await,
                Err(err) => Some(err),
            };
            failures += 1;
            if failures >= MAX_FAILURES {
                return Err(failed.map_or_else(
                    || Error::Protocol("upload keeps conflicting".into()),
                    Error::Http,
                ));
            }
            tokio::time::sleep(backoff.delay(failures)).await;
            match self.request(Method::HEAD, &upload).send().await {
                Ok(res) if res.status().is_success() => {
                    let now = upload_offset(&res)?;
                    if now > offset {
                        failures = 0;
                    }
                    offset = now;
                }
                // Gone (expired, or the node restarted): nothing to resume.
                Ok(res) if res.status() == reqwest::StatusCode::NOT_FOUND => {
                    return Err(Error::Server(natter_proto::ErrorBody {
                        code: ErrorCode::NotFound,
                        message: "the upload is gone; start again".into(),
                        retry_after_ms: None,
                    }));
                }
                Ok(res) => return self.parse::<Uploaded>(res).await,
                // Still unreachable: count it and try again.
                Err(_) => {}
            }
        }
    }

    /// `GET /v1/media/{id}`: the media with URLs freshly signed for this user.
    pub async fn media(&self, id: &str) -> Result<Uploaded> {
        let res = self
            .request(Method::GET, &format!("/v1/media/{id}"))
            .send()
            .await
            .map_err(Error::Http)?;
        self.parse(res).await
    }

    /// Downloads a signed URL (an attachment's `url` or `thumbnail_url`, relative to the
    /// server) whole.
    pub async fn download(&self, url: &str) -> Result<Vec<u8>> {
        let res = self
            .http()
            .get(format!("{}{url}", self.base_url()))
            .send()
            .await
            .map_err(Error::Http)?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(Error::Http)?;
        if !status.is_success() {
            return Err(crate::api::refusal(status, &bytes));
        }
        Ok(bytes.to_vec())
    }
}

fn upload_offset(res: &reqwest::Response) -> Result<u64> {
    res.headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Protocol("no Upload-Offset in the answer".into()))
}
