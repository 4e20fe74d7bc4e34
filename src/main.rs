//! The `pgsplit` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use pgsplit::config::LogFormat;
use pgsplit::context::Sources;
use pgsplit::settings::{ConfigSource, Settings};

/// SQL-aware read/write load-balancing proxy for PostgreSQL.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); PGSPLIT_* variables override its keys. Without it,
    /// pgsplit runs from PGSPLIT_* variables alone.
    #[arg(long, short, global = true, env = "PGSPLIT_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as text or json; overrides the configuration's log_format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file, with the PGSPLIT_* variables over it, and exit.
    CheckConfig {
        /// The file to check.
        path: PathBuf,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
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

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the effective configuration (file and PGSPLIT_* variables, defaults filled
    /// in) as TOML, with every password masked.
    Print,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsplit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Some(Command::CheckConfig { path }) => {
            let source =
                ConfigSource::from_process(Some(path.clone())).map_err(|e| e.to_string())?;
            let s = source.load().map_err(|e| e.to_string())?;
            let with_env = if source.env.is_empty() {
                ""
            } else {
                " with PGSPLIT_* variables"
            };
            println!(
                "{}{with_env}: OK ({} nodes, {} users, listen {})",
                path.display(),
                s.nodes.len(),
                s.users.len(),
                s.listen
            );
            Ok(())
        }
        Some(Command::Config {
            action: ConfigAction::Print,
        }) => {
            let (_, settings) = load(cli.config, "nothing to print")?;
            print!("{}", settings.raw.masked_toml()?);
            Ok(())
        }
        Some(Command::Demo {
            listen,
            standbys,
            tls,
        }) => {
            pgsplit::logging::init(cli.log_format.unwrap_or_default(), "info")?;
            runtime()?.block_on(pgsplit::demo::run(&listen, standbys, tls))
        }
        None => {
            // Configuration first, so that logging follows its log_level and log_format.
            let (source, settings) = load(cli.config, "nothing to do")?;
            let format = cli.log_format.unwrap_or(settings.raw.log_format);
            let log = pgsplit::logging::init(format, &settings.raw.log_level)?;
            let sources = Sources::new(
                Arc::new(move || source.load().map_err(|e| e.to_string())),
                Some(Arc::new(move |filter: &str| log.set_filter(filter))),
            );
            runtime()?.block_on(serve(settings, sources))
        }
    }
}

/// The configuration from `file` and the environment, and where it came from (read again
/// on reload); `idle` starts the message when there is neither.
fn load(file: Option<PathBuf>, idle: &str) -> Result<(ConfigSource, Settings), String> {
    let source = ConfigSource::from_process(file).map_err(|e| e.to_string())?;
    if source.is_empty() {
        return Err(format!(
            "{idle}: pass --config PATH or set PGSPLIT_* variables (see the README), or try `pgsplit demo` (see --help)"
        ));
    }
    let settings = source.load().map_err(|e| e.to_string())?;
    Ok((source, settings))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))
}

async fn serve(settings: Settings, sources: Sources) -> Result<(), String> {
    let proxy = pgsplit::proxy::start_with(settings, sources)
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    proxy.until_stopped().await;
    proxy.shutdown().await;
    Ok(())
}
