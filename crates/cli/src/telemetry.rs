//! Logging: JSON lines with the request id of the span they were written in.

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber. Safe to call twice (the second call does nothing).
pub fn init(config: &Config) {
    init_with(&config.log, config.log_format);
}

/// Installs the global subscriber with a filter and a format (commands without a [`Config`]).
pub fn init_with(log: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
