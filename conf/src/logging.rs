//! Logging for plugin binaries: `tracing` to stderr or to `log_file`, never
//! to stdout, which carries only the CNI reply.

use std::fs::OpenOptions;
use std::sync::Arc;

use tracing::level_filters::LevelFilter;

use crate::margay::{LogConfig, LogLevel};

impl From<LogLevel> for LevelFilter {
    fn from(l: LogLevel) -> LevelFilter {
        match l {
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

/// Installs the global subscriber. A log file that cannot be opened is not
/// worth failing a pod for: we say so on stderr and log there instead.
/// Calling it twice keeps the first subscriber.
pub fn init(conf: &LogConfig) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::from(conf.log_level))
        .with_ansi(false)
        .with_target(false);
    let file = conf.log_file.as_ref().map(|path| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| (path, e))
    });
    let _ = match file {
        Some(Ok(f)) => builder.with_writer(Arc::new(f)).try_init(),
        Some(Err((path, e))) => {
            let r = builder.with_writer(std::io::stderr).try_init();
            tracing::warn!(
                "log_file {} cannot be opened ({e}); logging to stderr",
                path.display()
            );
            r
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
