use wsguard_config::{
    ConfigHandle, ConfigSource, ConnectionConfig, DedupConfig, SessionConfig, StabilityConfig,
};

/// The parts of the configuration a WebSocket route reads: [`ConnectionConfig`] for the socket,
/// [`DedupConfig::on_duplicate`] for what a client hears of a duplicate, and [`SessionConfig`]
/// for clients that speak `wsguard.v1`.
///
/// Built from a [`StabilityConfig`] (fixed) or a [`ConfigHandle`] (live: limits, policies and
/// replies follow reloads; buffer sizes and timers apply to connections opened afterwards).
#[derive(Debug, Clone)]
pub struct WsConfig {
    connection: ConfigSource<ConnectionConfig>,
    dedup: ConfigSource<DedupConfig>,
    session: ConfigSource<SessionConfig>,
}

impl WsConfig {
    /// A config reading each part from its own source, with the production session settings
    /// (see [`with_session`](Self::with_session)).
    pub fn new(
        connection: impl Into<ConfigSource<ConnectionConfig>>,
        dedup: impl Into<ConfigSource<DedupConfig>>,
    ) -> Self {
        Self {
            connection: connection.into(),
            dedup: dedup.into(),
            session: SessionConfig::production().into(),
        }
    }

    /// Reads the session settings from `session` instead.
    pub fn with_session(mut self, session: impl Into<ConfigSource<SessionConfig>>) -> Self {
        self.session = session.into();
        self
    }

    /// Where the connection settings come from.
    pub fn connection(&self) -> &ConfigSource<ConnectionConfig> {
        &self.connection
    }

    /// Where the dedup settings come from.
    pub fn dedup(&self) -> &ConfigSource<DedupConfig> {
        &self.dedup
    }

    /// Where the session settings come from.
    pub fn session(&self) -> &ConfigSource<SessionConfig> {
        &self.session
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
        Self::new(config.connection, config.dedup).with_session(config.session)
    }
}

impl From<&StabilityConfig> for WsConfig {
    fn from(config: &StabilityConfig) -> Self {
        Self::new(config.connection.clone(), config.dedup.clone())
            .with_session(config.session.clone())
    }
}

impl From<ConfigHandle> for WsConfig {
    fn from(handle: ConfigHandle) -> Self {
        Self::new(&handle, &handle).with_session(&handle)
    }
}

impl From<&ConfigHandle> for WsConfig {
    fn from(handle: &ConfigHandle) -> Self {
        Self::new(handle, handle).with_session(handle)
    }
}

impl From<ConnectionConfig> for WsConfig {
    /// These connection settings, with the production dedup replies and session settings.
    fn from(connection: ConnectionConfig) -> Self {
        Self::new(connection, DedupConfig::production())
    }
}
