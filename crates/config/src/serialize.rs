use std::error::Error;
use std::fmt;

use crate::StabilityConfig;

/// Why a configuration could not be written as TOML or JSON.
///
/// The serializers accept every value this crate's types can hold, so this is not expected; it is
/// returned rather than panicking so that a program printing its config decides what to do.
#[derive(Debug)]
pub struct SerializeError {
    format: &'static str,
    source: Box<dyn Error + Send + Sync>,
}

impl fmt::Display for SerializeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot write the configuration as {}: {}",
            self.format, self.source
        )
    }
}

impl Error for SerializeError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

impl StabilityConfig {
    /// This configuration as TOML, every field included.
    ///
    /// ```
    /// let text = wsguard_config::StabilityConfig::testing().to_toml_string()?;
    /// assert!(text.contains("[circuit_breaker]"));
    /// # Ok::<(), wsguard_config::SerializeError>(())
    /// ```
    pub fn to_toml_string(&self) -> Result<String, SerializeError> {
        toml::to_string_pretty(self).map_err(|e| SerializeError {
            format: "TOML",
            source: Box::new(e),
        })
    }

    /// This configuration as pretty JSON, every field included.
    pub fn to_json_string(&self) -> Result<String, SerializeError> {
        serde_json::to_string_pretty(self).map_err(|e| SerializeError {
            format: "JSON",
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reads_back_through_serde_without_a_loader() {
        let mut config = StabilityConfig::development();
        config.dedup.fingerprint_key = Some("000102030405060708090a0b0c0d0e0f".to_owned());
        let text = config.to_json_string().unwrap();
        let read: StabilityConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(read, config);
    }

    #[test]
    fn toml_names_every_section_and_writes_durations_readably() {
        let text = StabilityConfig::testing().to_toml_string().unwrap();
        for section in [
            "[metrics]",
            "[circuit_breaker]",
            "[dedup]",
            "[connection]",
            "[session]",
            "[retry]",
        ] {
            assert!(text.contains(section), "{section} missing from\n{text}");
        }
        assert!(text.contains("ttl = \"1s\""), "{text}");
    }
}
