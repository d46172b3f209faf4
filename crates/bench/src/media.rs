//! The `media` scenario: uploaders each send files of one size at once (`POST /v1/media`),
//! then download them by their signed URLs; upload and download throughput in MiB/s, and
//! each transfer's time. Run it beside a `direct` run to see what uploads do to message
//! latency (scripts/bench-media.sh).

use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use serde_json::json;

use crate::Common;
use crate::api::Api;
use crate::scenarios::{accounts, note, run_id};
use crate::stats::{Summary, print_table};

#[derive(Args, Debug)]
pub(crate) struct MediaArgs {
    /// Users uploading at once (each one upload at a time).
    #[arg(long, default_value_t = 8)]
    uploaders: usize,
    /// Files per uploader.
    #[arg(long, default_value_t = 4)]
    files: usize,
    /// Size of each file in MiB.
    #[arg(long, default_value_t = 32)]
    size_mib: usize,
    /// Upload the files over and over for this many seconds (the same bytes again: the
    /// server hashes and stages each upload whole before it finds the blob stored), and skip
    /// the downloads: load to run beside another scenario.
    #[arg(long)]
    secs: Option<f64>,
}

pub(crate) async fn media(common: &Common, args: MediaArgs) -> anyhow::Result<bool> {
    if args.uploaders == 0 || args.files == 0 || args.size_mib == 0 {
        bail!("need --uploaders, --files and --size-mib ≥ 1");
    }
    let run_id = run_id(common);
    let api = Api::new(&common.servers[0])?;
    let users = accounts(&api, common, &run_id, "m", args.uploaders).await?;
    let size = args.size_mib << 20;
    // One body per upload, each with its own first bytes (no two alike: no dedup), built
    // before the clock starts.
    let mut tail = vec![0u8; size];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for chunk in tail.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let bodies: Vec<Vec<bytes::Bytes>> = (0..args.uploaders)
        .map(|u| {
            (0..args.files)
                .map(|f| {
                    let mut body = tail.clone();
                    let head = format!("%PDF-1.7\n%{run_id}-{u}-{f}\n");
                    body[..head.len()].copy_from_slice(head.as_bytes());
                    bytes::Bytes::from(body)
                })
                .collect()
        })
        .collect();
    drop(tail);
    let total_mib = (args.uploaders * args.files * args.size_mib) as f64;
    note(format!(
        "uploading {total_mib} MiB: {} uploaders x {} files x {} MiB",
        args.uploaders, args.files, args.size_mib
    ));

    let t = Instant::now();
    let until = args.secs.map(|s| t + std::time::Duration::from_secs_f64(s));
    let uploads = futures_util::stream::iter(users.iter().zip(bodies).map(|(user, files)| {
        let api = api.clone();
        async move {
            let mut done = Vec::new();
            loop {
                for body in &files {
                    let start = Instant::now();
                    let url = api.upload(&user.token, body.clone()).await?;
                    done.push((url, start.elapsed().as_secs_f64() * 1000.0));
                }
                if until.is_none_or(|u| Instant::now() >= u) {
                    break;
                }
            }
            anyhow::Ok(done)
        }
    }))
    .buffer_unordered(args.uploaders)
    .collect::<Vec<_>>()
    .await;
    let upload_secs = t.elapsed().as_secs_f64();
    let mut urls = Vec::new();
    let mut up_times = Vec::new();
    for done in uploads {
        for (url, secs) in done.context("an upload failed")? {
            urls.push(url);
            up_times.push(secs);
        }
    }
    let uploaded_mib = (up_times.len() * args.size_mib) as f64;
    if args.secs.is_some() {
        // Load only: each distinct file downloaded once.
        urls.truncate(args.uploaders * args.files);
    }

    let t = Instant::now();
    let downloads = futures_util::stream::iter(urls.into_iter().map(|url| {
        let api = api.clone();
        async move {
            let start = Instant::now();
            let n = api.download(&url).await?;
            anyhow::Ok((n, start.elapsed().as_secs_f64() * 1000.0))
        }
    }))
    .buffer_unordered(args.uploaders)
    .collect::<Vec<_>>()
    .await;
    let download_secs = t.elapsed().as_secs_f64();
    let mut down_times = Vec::new();
    // Times in milliseconds.
    for d in downloads {
        let (n, secs) = d.context("a download failed")?;
        if n != size as u64 {
            bail!("a download returned {n} bytes, not {size}");
        }
        down_times.push(secs);
    }
    let up = Summary::of_values(&mut up_times);
    let down = Summary::of_values(&mut down_times);
    let rows = vec![
        (
            "uploaded".to_owned(),
            format!(
                "{uploaded_mib} MiB in {upload_secs:.2} s: {:.0} MiB/s",
                uploaded_mib / upload_secs
            ),
        ),
        ("one upload p50/p90/p99/p99.9/max".to_owned(), up.cell()),
        (
            "downloaded".to_owned(),
            format!(
                "{total_mib} MiB in {download_secs:.2} s: {:.0} MiB/s",
                total_mib / download_secs
            ),
        ),
        ("one download p50/p90/p99/p99.9/max".to_owned(), down.cell()),
    ];
    print_table(common.json, "media: uploads then downloads", &rows);
    if common.json {
        let obj = json!({
            "scenario": "media",
            "uploaders": args.uploaders,
            "files": args.files,
            "size_mib": args.size_mib,
            "upload_mib_per_s": uploaded_mib / upload_secs,
            "uploaded_mib": uploaded_mib,
            "download_mib_per_s": total_mib / download_secs,
            "upload_secs": upload_secs,
            "download_secs": download_secs,
        });
        println!("{obj}");
    }
    Ok(true)
}
