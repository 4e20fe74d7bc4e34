//! Log output: text or JSON lines on stdout, filtered by `log_level` (or `RUST_LOG`), with
//! a filter that a configuration reload can change while pgsplit runs.

use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// Changes the log filter of the running process; cheap to clone and share.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at startup, so it keeps deciding and `log_level` is ignored.
    rust_log: bool,
}

impl LogControl {
    /// Makes `filter` (`RUST_LOG` syntax, as `log_level`) the filter from now on; does
    /// nothing but log why when `RUST_LOG` was set at startup, since that wins.
    pub fn set_filter(&self, filter: &str) -> Result<(), String> {
        let new = EnvFilter::try_new(filter).map_err(|e| format!("log_level {filter:?}: {e}"))?;
        if self.rust_log {
            tracing::warn!(
                log_level = filter,
                "log_level not applied: RUST_LOG is set and decides the log filter"
            );
            return Ok(());
        }
        self.handle
            .reload(new)
            .map_err(|e| format!("cannot change the log filter: {e}"))
    }
}

/// Sends log lines to stdout as `format` says, filtered by `RUST_LOG` when it is set and
/// else by `filter` (the configuration's `log_level`); call it once per process.
pub fn init(format: LogFormat, filter: &str) -> Result<LogControl, String> {
    let rust_log = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => Some(value),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => return Err("RUST_LOG is not UTF-8".into()),
    };
    // Colours only for a person at a terminal, not in the journal or a collector's file.
    let ansi = std::io::stdout().is_terminal();
    let (subscriber, control) = build(format, filter, rust_log.as_deref(), ansi, std::io::stdout)?;
    subscriber
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(control)
}

/// The subscriber [`init`] installs, writing to `writer` (tests capture it); `ansi`
/// colours text lines.
fn build<W>(
    format: LogFormat,
    filter: &str,
    rust_log: Option<&str>,
    ansi: bool,
    writer: W,
) -> Result<(impl tracing::Subscriber + Send + Sync + 'static, LogControl), String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let initial = match rust_log {
        Some(value) => EnvFilter::try_new(value).map_err(|e| format!("RUST_LOG {value:?}: {e}"))?,
        None => EnvFilter::try_new(filter).map_err(|e| format!("log_level {filter:?}: {e}"))?,
    };
    let (filter_layer, handle) = reload::Layer::new(initial);
    let output = match format {
        LogFormat::Text => fmt::layer().with_ansi(ansi).with_writer(writer).boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(writer).boxed(),
    };
    let subscriber = Registry::default().with(filter_layer).with(output);
    let control = LogControl {
        handle,
        rust_log: rust_log.is_some(),
    };
    Ok((subscriber, control))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        fn text(&self) -> String {
            let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn set_filter_changes_what_is_logged() {
        let out = Captured::default();
        let (subscriber, control) =
            build(LogFormat::Text, "info", None, false, out.clone()).expect("valid filter");
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("before-debug");
            tracing::info!("before-info");
            control.set_filter("debug").expect("valid filter");
            tracing::debug!("after-debug");
            assert!(control.set_filter("pgsplit=loudest").is_err());
            tracing::debug!("still-debug");
        });
        let text = out.text();
        assert!(!text.contains("before-debug"), "{text}");
        for line in ["before-info", "after-debug", "still-debug"] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn rust_log_wins_over_log_level() {
        let out = Captured::default();
        let (subscriber, control) =
            build(LogFormat::Text, "debug", Some("warn"), false, out.clone()).expect("valid");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("hidden-info");
            control.set_filter("debug").expect("accepted, not applied");
            tracing::debug!("hidden-debug");
        });
        let text = out.text();
        assert!(!text.contains("hidden"), "{text}");
        assert!(
            text.contains("RUST_LOG is set"),
            "the no-op says why:\n{text}"
        );
        assert!(build(LogFormat::Text, "info", Some("x=nope"), false, out).is_err());
    }

    #[test]
    fn json_format_writes_one_object_per_line() {
        let out = Captured::default();
        let (subscriber, _control) =
            build(LogFormat::Json, "info", None, false, out.clone()).expect("valid");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(node = "pg1", "standby lagging");
        });
        let text = out.text();
        let line = text.lines().next().unwrap_or_default();
        assert!(line.starts_with('{') && line.ends_with('}'), "{text}");
        assert!(line.contains(r#""message":"standby lagging""#), "{text}");
        assert!(line.contains(r#""node":"pg1""#), "{text}");
    }
}
