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
    /// The configuration: `natter config check [--config FILE]` names every setting that
    /// cannot work; `natter config default` prints every setting with its default.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Take a consistent copy of a running single node (its embedded store, the media it
    /// refers to, its signing key) into DEST, a new directory.
    Backup {
        dest: std::path::PathBuf,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Check a backup (store integrity, contiguous logs, every media object's hash) and
    /// copy it into the data directory, which must not hold a store yet.
    Restore {
        src: std::path::PathBuf,
        /// Only check the backup.
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Push notifications: `natter push vapid-keys` prints a fresh VAPID key pair for
    /// `[push.webpush]`.
    Push {
        #[command(subcommand)]
        action: PushAction,
    },
}

// Parsed once at start: the size of a variant holding every flag does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ConfigAction {
    /// Check a configuration (the file, then flags and NATTER_* variables over it): every
    /// problem, each with its key; exit status 1 when there is one.
    Check {
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Print a commented TOML file of every setting with its default.
    Default,
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
        Command::Config { action: ConfigAction::Default } => {
            print!("{}", natter_server::config::default_toml());
            return Ok(());
        }
        Command::Config { action: ConfigAction::Check { args } } => {
            let (cfg, problems) = Config::gather(&args)?;
            let source =
                args.config.as_ref().map_or("defaults".into(), |p| p.display().to_string());
            if problems.is_empty() {
                let store = match &cfg.database_url {
                    Some(_) if cfg.redis_url.is_some() => {
                        "PostgreSQL, cluster mode (Redis)".to_owned()
                    }
                    Some(_) => "PostgreSQL, single node".to_owned(),
                    None => format!("SQLite in {}", cfg.data_dir.display()),
                };
                println!("{source}: ok (listen {}, store {store})", cfg.listen);
                return Ok(());
            }
            for p in &problems {
                println!("{p}");
            }
            eprintln!("{source}: {} problem(s)", problems.len());
            std::process::exit(1);
        }
        Command::Backup { dest, args } => {
            let m = natter_server::backup::backup(&Config::load(&args)?, &dest)?;
            println!(
                "backup in {}: {} users, {} conversations, {} entries, {} media objects ({} bytes)",
                dest.display(),
                m.users,
                m.conversations,
                m.entries,
                m.blobs,
                m.blob_bytes
            );
            return Ok(());
        }
        Command::Restore { src, check, args } => {
            let cfg = Config::load(&args)?;
            let m = natter_server::backup::restore(&cfg, &src, check)?;
            let done = if check {
                "is whole".to_owned()
            } else {
                format!("restored into {}", cfg.data_dir.display())
            };
            println!(
                "backup {} {done}: {} users, {} conversations, {} entries, {} media objects",
                src.display(),
                m.users,
                m.conversations,
                m.entries,
                m.blobs
            );
            return Ok(());
        }
        Command::Push { action: PushAction::VapidKeys } => {
            let (public, private) = natter_server::vapid_keys()?;
            println!("vapid_public_key = \"{public}\"\nvapid_private_key = \"{private}\"");
            return Ok(());
        }
    };
    let cfg = Config::load(&args)?;
    let export = init_logs(&cfg)?;
    let data_dir = cfg.data_dir.clone();
    let server = natter_server::start(cfg).await?;
    tracing::info!(addr = %server.addr(), data_dir = %data_dir.display(), "natter listening");
    println!("natter listening on http://{} (data in {})", server.addr(), data_dir.display());
    // SIGTERM (a deploy, a supervisor): drain, so that nobody is dropped at once. SIGINT
    // (Ctrl-C at a terminal): stop now, still flushing every commit.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT: shutting down");
            server.shutdown_token().cancel();
        }
        _ = term.recv() => {
            tracing::info!("SIGTERM: draining");
            // SIGINT cuts the drain short: stop now (commits still flush).
            tokio::select! {
                () = server.drain() => {}
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("SIGINT: draining cut short, shutting down");
                    server.shutdown_token().cancel();
                }
            }
        }
    }
    // One more signal while stopping: exit at once (what is not committed is not acked).
    let stopped = tokio::select! {
        stopped = server.wait() => stopped,
        _ = tokio::signal::ctrl_c() => std::process::exit(130),
        _ = term.recv() => std::process::exit(143),
    };
    if let Some(export) = export {
        // The exporter's batch thread blocks on its HTTP calls: not on a runtime thread.
        tokio::task::spawn_blocking(move || export.shutdown()).await?;
    }
    stopped
}

/// Logging (text or JSON, filtered by `NATTER_LOG`), and the span export when configured.
fn init_logs(cfg: &Config) -> anyhow::Result<Option<natter_server::telemetry::Export>> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_env("NATTER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match cfg.log_format.as_str() {
        "json" => tracing_subscriber::fmt::layer().json().boxed(),
        _ => tracing_subscriber::fmt::layer().boxed(),
    };
    let (otlp, export) = match &cfg.otlp_endpoint {
        Some(url) => {
            let (layer, export) =
                natter_server::telemetry::otlp_layer(url, cfg.node_id.as_deref())?;
            (Some(layer), Some(export))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(filter).with(logs).with(otlp).init();
    Ok(export)
}
