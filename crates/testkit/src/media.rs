//! Media helpers: uploads as a client makes them, and [`CuttingProxy`], a loopback TCP
//! proxy that breaks connections part-way, for resumable uploads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http::Endpoint;
use crate::wait::within;

impl Endpoint {
    /// `POST /v1/media` with `bytes`, `Content-Type: content_type` (if any) and
    /// `?filename=name` (if any): the status and the parsed body.
    pub async fn upload(
        &self,
        token: &str,
        bytes: Vec<u8>,
        content_type: Option<&str>,
        name: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = self.http.post(self.url("/v1/media")).bearer_auth(token).body(bytes);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if let Some(name) = name {
            req = req.query(&[("filename", name)]);
        }
        let res = within("an upload's answer", req.send()).await.expect("upload request");
        let status = res.status();
        let text = within("an upload's body", res.text()).await.expect("upload body");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }

    /// `GET` of a signed media URL (relative to the node): the response.
    pub async fn fetch(&self, url: &str, range: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(url));
        if let Some(range) = range {
            req = req.header(reqwest::header::RANGE, range);
        }
        within("a download", req.send()).await.expect("download request")
    }
}

/// Forwards connections to `upstream`, cutting the connections it forwards after
/// `cuts[i]` bytes from the client (the i-th connection), then passing the rest through.
pub struct CuttingProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    pub async fn start(upstream: SocketAddr, cuts: Vec<u64>) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicUsize::new(0));
        let cuts = Arc::new(cuts);
        let counter = cut.clone();
        let task = tokio::spawn(async move {
            let mut n = 0usize;
            while let Ok((client, _)) = listener.accept().await {
                let limit = cuts.get(n).copied();
                n += 1;
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    if pipe(client, server, limit).await {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        CuttingProxy { addr, cut, task }
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways; with `limit`, closes both sides once that many client bytes went
/// through (returns true then).
async fn pipe(client: TcpStream, server: TcpStream, limit: Option<u64>) -> bool {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    });
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut cut = false;
    loop {
        let want = match limit {
            Some(limit) if sent >= limit => {
                cut = true;
                break;
            }
            Some(limit) => buf.len().min(usize::try_from(limit - sent).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        match cr.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                sent += n as u64;
            }
        }
    }
    down.abort();
    cut
}
