//! `natter-bench`: Natter's load generator. It measures a running server (or several:
//! connections are spread over every `--server`) and checks the guarantees on its own
//! traffic, exiting non-zero with the violations printed if any message is lost,
//! duplicated or out of order.
//!
//! # Layout
//! - `scenarios`: one function per subcommand (setup over REST, the run, the report).
//! - `run`: the phases every connection follows and the main side that drives them.
//! - `conn`: one connection task (send, receive, check).
//! - `check`: the per-conversation tracks and the final verdict.
//! - `media`: the upload and download scenario.
//! - `push`: the push scenario and the push gateway it plays.
//! - `search`: the message search scenario (a seeded history, then queries).
//! - `api`: REST setup and `/metrics`; `stats`: clock, histograms, tables.
//!
//! docs/benchmarks.md says how to run each scenario and what was measured.

mod api;
mod check;
mod conn;
mod media;
mod push;
mod run;
mod scenarios;
mod search;
mod stats;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "natter-bench",
    version,
    about = "Load generator and guarantee checker for Natter"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options of every scenario.
#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// Server base URL; repeat to spread connections over several nodes (setup uses the first).
    #[arg(long = "server", global = true, default_value = "http://127.0.0.1:8080")]
    pub(crate) servers: Vec<String>,
    /// Print one JSON object on stdout (the table goes to stderr).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Prefix of this run's handles (default: derived from the time and process id), so
    /// that runs can share a data directory.
    #[arg(long, global = true)]
    pub(crate) run_id: Option<String>,
    /// Registrations in flight at once.
    #[arg(long, global = true, default_value_t = 8)]
    pub(crate) setup_concurrency: usize,
    /// WebSocket handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 512)]
    pub(crate) connect_concurrency: usize,
    /// Attempts per connection before it counts as failed.
    #[arg(long, global = true, default_value_t = 8)]
    pub(crate) connect_attempts: u32,
    /// Unanswered sends one connection may have before it waits (open loop: the wait
    /// counts in the latency).
    #[arg(long, global = true, default_value_t = 128)]
    pub(crate) max_in_flight: usize,
    /// Message body size in bytes (at least 20: the send time).
    #[arg(long, global = true, default_value_t = 64)]
    pub(crate) body_bytes: usize,
    /// Longest wait, after sending stops, for every send's reply and every delivery.
    #[arg(long, global = true, default_value_t = 10)]
    pub(crate) drain_secs: u64,
    /// Open every WebSocket with permessage-deflate (`?compress=deflate`; the server must
    /// agree, see `ws_compression`): frames compressed both ways.
    #[arg(long, global = true)]
    pub(crate) deflate: bool,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N authenticated connections and hold them idle: connect rate, server memory.
    Connections(scenarios::ConnectionsArgs),
    /// Pairs exchanging direct messages at an offered rate: throughput, latency, checks.
    Direct(scenarios::DirectArgs),
    /// Groups with every member connected and a few senders each: fan-out throughput.
    Group(scenarios::GroupArgs),
    /// Every client drops at once and resumes: time until all caught up, no loss.
    Storm(scenarios::StormArgs),
    /// Uploads at once, then downloads: media throughput in MiB/s.
    Media(media::MediaArgs),
    /// Offline members owed pushes, the bench as their push gateway: pushes/s and
    /// commit→push latency, with delivery latency to online readers in the same run.
    Push(push::PushArgs),
    /// A history of messages in many groups, then searches of each kind: query latency and
    /// the append rate while seeding.
    Search(search::SearchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let res = rt.block_on(async {
        match cli.scenario {
            Scenario::Connections(a) => scenarios::connections(&cli.common, a).await,
            Scenario::Direct(a) => scenarios::direct(&cli.common, a).await,
            Scenario::Group(a) => scenarios::group(&cli.common, a).await,
            Scenario::Storm(a) => scenarios::storm(&cli.common, a).await,
            Scenario::Media(a) => media::media(&cli.common, a).await,
            Scenario::Push(a) => push::push(&cli.common, a).await,
            Scenario::Search(a) => search::search(&cli.common, a).await,
        }
    });
    // Connection tasks may still be closing; do not wait for them.
    rt.shutdown_background();
    match res {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(err) => {
            eprintln!("natter-bench: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
