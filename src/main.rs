//! The `pgsplit` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgsplit::config::Settings;
use pgsplit::reload::Sources;
use std::sync::Arc;

/// SQL-aware read/write load-balancing proxy for PostgreSQL.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML) to run with.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The file to check.
        path: PathBuf,
    },
    /// Start a throwaway local primary + hot standbys with pgsplit in front.
    Demo {
        /// Address pgsplit listens on.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
        /// Number of hot standbys.
        #[arg(long, default_value_t = 2)]
        standbys: usize,
        /// Serve TLS too, with a freshly generated self-signed certificate.
        #[arg(long)]
        tls: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgsplit: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match (cli.command, cli.config) {
        (Some(Command::CheckConfig { path }), _) => Settings::load(&path)
            .map(|s| {
                println!(
                    "{}: OK ({} nodes, {} users, listen {})",
                    path.display(),
                    s.nodes.len(),
                    s.users.len(),
                    s.listen
                );
            })
            .map_err(|e| e.to_string()),
        (
            Some(Command::Demo {
                listen,
                standbys,
                tls,
            }),
            _,
        ) => runtime.block_on(pgsplit::demo::run(&listen, standbys, tls)),
        (None, Some(path)) => match Settings::load(&path) {
            Ok(settings) => runtime.block_on(serve(settings, path)),
            Err(e) => Err(e.to_string()),
        },
        (None, None) => {
            Err("nothing to do: pass --config PATH, or try `pgsplit demo` (see --help)".into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsplit: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings, path: PathBuf) -> Result<(), String> {
    let sources = Sources::new(
        Arc::new(move || Settings::load(&path).map_err(|e| e.to_string())),
        None,
    );
    let proxy = pgsplit::proxy::start_with(settings, sources)
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    proxy.until_stopped().await;
    proxy.shutdown().await;
    Ok(())
}
