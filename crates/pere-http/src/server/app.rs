//! [`App`]: what every request of the server shares.

use std::sync::Arc;

use pere_core::{EventStore, Hub};

use super::config::ServerConfig;
use super::limits::Limits;
use super::metrics::HttpMetrics;

/// What every handler gets: the hub, the server's configuration, metrics.
pub struct App<S: EventStore> {
    /// The hub.
    pub hub: Hub<S>,
    /// The server's configuration.
    pub config: ServerConfig,
    /// HTTP-level counters.
    pub metrics: HttpMetrics,
    /// Open connections and streams, against the configured limits.
    pub limits: Arc<Limits>,
}
