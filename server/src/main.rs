//! `mcu-server` binary: parses the command line, loads the configuration, runs the server.

use clap::Parser;
use server::config::Config;
use std::path::PathBuf;

/// WebRTC MCU: mixes audio, tiles video, records meetings.
#[derive(Parser)]
#[command(name = "mcu-server", version)]
struct Cli {
    /// TOML configuration file (environment variables override it).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Development mode: generated API key and token secret, printed on start-up.
    #[arg(long)]
    dev: bool,
    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    print_config: bool,
    /// Log as JSON lines.
    #[arg(long, env = "MCU_LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCU_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,webrtc=warn,rtc=warn"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    // Garbage VP8 from a peer makes FFmpeg log to stderr; our own logs say what happened.
    mixer::ffmpeg_next::util::log::set_level(mixer::ffmpeg_next::util::log::Level::Fatal);
    let mut config = Config::load(cli.config.as_deref(), |k| std::env::var(k).ok())?;
    config.dev |= cli.dev;
    if cli.print_config {
        print!("{}", config.to_masked_toml());
        return Ok(());
    }
    if let Err(e) = config.validate() {
        eprintln!("mcu-server: {e}");
        std::process::exit(2);
    }
    actix_web::rt::System::new().block_on(async move {
        let running = server::start(config).await?;
        let dev = running.state.config.dev;
        tracing::info!(addr = %running.addr, "listening");
        if dev {
            println!("mcu-server (dev) on http://{}", running.addr);
            println!("  dev API key: {}", running.api_key);
            println!(
                "  open http://localhost:{}/ to join a room",
                running.addr.port()
            );
        }
        // A file-size limit (RLIMIT_FSIZE) must fail the recording that hit it (EFBIG), not kill
        // the server: SIGXFSZ's default action terminates the process. Handling it is enough.
        if let Ok(mut xfsz) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25))
        {
            actix_web::rt::spawn(async move {
                while xfsz.recv().await.is_some() {
                    tracing::warn!("SIGXFSZ: a file reached the size limit; its write fails");
                }
            });
        }
        let handle = running.server.handle();
        let state = running.state.clone();
        actix_web::rt::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
            server::shutdown(&state, &handle).await;
        });
        running.server.await?;
        anyhow::Ok(())
    })
}
