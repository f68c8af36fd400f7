//! `mcu-server` binary: parses the command line, loads the configuration, runs the server.

use clap::Parser;
use server::config::Config;
use std::path::PathBuf;

/// WebRTC MCU: mixes audio, tiles video, records meetings.
#[derive(Parser)]
#[command(name = "mcu-server", version)]
struct Cli {
    /// TOML configuration file (environment variables override it).
    #[arg(long, short, env = "MCU_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: generated API key and token secret, printed on start-up.
    #[arg(long)]
    dev: bool,
    /// Print the effective configuration (secrets masked) and exit: 0 if the server would start
    /// with it, 2 (and why on stderr) if it would refuse it.
    #[arg(long)]
    print_config: bool,
    /// Log as JSON lines.
    #[arg(long, env = "MCU_LOG_JSON")]
    log_json: bool,
    /// Ask the server at the configured listen address for `GET /healthz` and exit 0 if it
    /// answers 200, 1 otherwise (a container health check without curl).
    #[arg(long)]
    healthcheck: bool,
}

/// `--healthcheck`: one plain HTTP/1.0 request to the configured listen address (a wildcard
/// address is reached on loopback).
fn healthcheck(listen: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let timeout = Duration::from_secs(3);
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        eprintln!("mcu-server: healthcheck: cannot connect to {addr}");
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap_or(0);
    let line = String::from_utf8_lossy(&head[..n]);
    let ok = line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200");
    if !ok {
        eprintln!(
            "mcu-server: healthcheck: {addr} answered {:?}",
            line.lines().next().unwrap_or("nothing")
        );
    }
    ok
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
        // Colours only on a terminal: files, journald and `docker logs` get plain text.
        use std::io::IsTerminal as _;
        tracing_subscriber::fmt()
            .with_ansi(std::io::stdout().is_terminal())
            .with_env_filter(filter)
            .init();
    }
    // Garbage VP8 from a peer makes FFmpeg log to stderr; our own logs say what happened.
    mixer::ffmpeg_next::util::log::set_level(mixer::ffmpeg_next::util::log::Level::Fatal);
    let mut config = match Config::load(cli.config.as_deref(), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcu-server: {e}");
            std::process::exit(2);
        }
    };
    config.dev |= cli.dev;
    if cli.healthcheck {
        std::process::exit(if healthcheck(config.listen) { 0 } else { 1 });
    }
    if cli.print_config {
        // Printed even when invalid (to see why), then refused like a start would be.
        print!("{}", config.to_masked_toml());
        if let Err(e) = config.validate() {
            eprintln!("mcu-server: {e}");
            std::process::exit(2);
        }
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
            let port = running.addr.port();
            println!(
                "  join a room:   http://localhost:{port}/r/<room>  (tokens are minted for you)"
            );
            println!("  admin console: http://localhost:{port}/admin  (paste the key above)");
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
            // SIGTERM drains first (a second signal cuts it short); SIGINT (Ctrl-C) stops now.
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: draining");
                    tokio::select! {
                        _ = server::drain(&state) => {}
                        _ = term.recv() => tracing::info!("second SIGTERM: shutting down now"),
                        _ = int.recv() => tracing::info!("SIGINT: shutting down now"),
                    }
                }
                _ = int.recv() => tracing::info!("SIGINT"),
            }
            server::shutdown(&state, &handle).await;
        });
        running.server.await?;
        anyhow::Ok(())
    })
}
