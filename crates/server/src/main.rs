//! The `natter` binary: parse the configuration, install logging, run a node until SIGINT
//! or SIGTERM.

use clap::{Parser, Subcommand};
use natter_server::{Config, ServeArgs};
use tracing_subscriber::EnvFilter;

/// mimalloc returns freed memory to the system and keeps per-connection overhead small;
/// glibc's malloc raised its mmap threshold after the first freed 19 MiB argon2 buffer and
/// then kept every later one (a fresh server grew ~19 MB per login).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "natter", version, about = "Natter, a real-time chat server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (single node on embedded SQLite by default).
    Serve(ServeArgs),
    /// Server administrators: `natter admin grant HANDLE`, `natter admin revoke HANDLE`,
    /// on the store the same settings as `serve` name (`--data-dir`, `--database-url`, …).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Push notifications: `natter push vapid-keys` prints a fresh VAPID key pair for
    /// `[push.webpush]`.
    Push {
        #[command(subcommand)]
        action: PushAction,
    },
}

#[derive(Subcommand)]
enum PushAction {
    /// Print a new VAPID key pair (base64url) as the lines of `[push.webpush]`.
    VapidKeys,
}

#[derive(Subcommand)]
enum AdminAction {
    /// Make an account a server administrator.
    Grant {
        handle: String,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Take server administration back.
    Revoke {
        handle: String,
        #[command(flatten)]
        args: ServeArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match Cli::parse().command {
        Command::Serve(args) => args,
        Command::Admin { action } => {
            let (handle, args, grant) = match action {
                AdminAction::Grant { handle, args } => (handle, args, true),
                AdminAction::Revoke { handle, args } => (handle, args, false),
            };
            let cfg = Config::load(&args)?;
            natter_server::set_admin(&cfg, &handle, grant).await?;
            let done = if grant { "is now a server administrator" } else { "is no longer one" };
            println!("{handle} {done}");
            return Ok(());
        }
        Command::Push { action: PushAction::VapidKeys } => {
            let (public, private) = natter_server::vapid_keys()?;
            println!("vapid_public_key = \"{public}\"\nvapid_private_key = \"{private}\"");
            return Ok(());
        }
    };
    let cfg = Config::load(&args)?;
    let filter = EnvFilter::try_from_env("NATTER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if cfg.log_format == "json" {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let data_dir = cfg.data_dir.clone();
    let server = natter_server::start(cfg).await?;
    tracing::info!(addr = %server.addr(), data_dir = %data_dir.display(), "natter listening");
    println!("natter listening on http://{} (data in {})", server.addr(), data_dir.display());
    let token = server.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    server.wait().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
