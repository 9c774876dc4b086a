use wsguard_config::{ConfigHandle, ConfigSource, ConnectionConfig, DedupConfig, StabilityConfig};

/// The parts of the configuration a WebSocket route reads: [`ConnectionConfig`] for the socket
/// and [`DedupConfig::on_duplicate`] for what a client hears of a duplicate.
///
/// Built from a [`StabilityConfig`] (fixed) or a [`ConfigHandle`] (live: limits, policies and
/// replies follow reloads; buffer sizes and timers apply to connections opened afterwards).
#[derive(Debug, Clone)]
pub struct WsConfig {
    connection: ConfigSource<ConnectionConfig>,
    dedup: ConfigSource<DedupConfig>,
}

impl WsConfig {
    /// A config reading each part from its own source.
    pub fn new(
        connection: impl Into<ConfigSource<ConnectionConfig>>,
        dedup: impl Into<ConfigSource<DedupConfig>>,
    ) -> Self {
        Self {
            connection: connection.into(),
            dedup: dedup.into(),
        }
    }

    /// Where the connection settings come from.
    pub fn connection(&self) -> &ConfigSource<ConnectionConfig> {
        &self.connection
    }

    /// Where the dedup settings come from.
    pub fn dedup(&self) -> &ConfigSource<DedupConfig> {
        &self.dedup
    }
}

impl Default for WsConfig {
    /// The production preset.
    fn default() -> Self {
        StabilityConfig::production().into()
    }
}

impl From<StabilityConfig> for WsConfig {
    fn from(config: StabilityConfig) -> Self {
        Self::new(config.connection, config.dedup)
    }
}

impl From<&StabilityConfig> for WsConfig {
    fn from(config: &StabilityConfig) -> Self {
        Self::new(config.connection.clone(), config.dedup.clone())
    }
}

impl From<ConfigHandle> for WsConfig {
    fn from(handle: ConfigHandle) -> Self {
        Self::new(&handle, &handle)
    }
}

impl From<&ConfigHandle> for WsConfig {
    fn from(handle: &ConfigHandle) -> Self {
        Self::new(handle, handle)
    }
}

impl From<ConnectionConfig> for WsConfig {
    /// These connection settings, with the production dedup replies.
    fn from(connection: ConnectionConfig) -> Self {
        Self::new(connection, DedupConfig::production())
    }
}
