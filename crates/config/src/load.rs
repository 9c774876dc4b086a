use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Json, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Profile, Provider};

use crate::{FieldError, Preset, StabilityConfig, ValidationError};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[cfg_attr(docsrs, doc(cfg(feature = "load")))]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file or the environment does not fit the configuration's shape: bad syntax, an unknown
    /// field, a value of the wrong type.
    #[error("{}", ParseDisplay(origin, errors))]
    Parse {
        /// Where the text came from (a file path, `environment`, `string`).
        origin: String,
        /// The problems, each naming its field path.
        errors: Vec<FieldError>,
    },
    /// The configuration parsed but breaks validation rules.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A reload read a file that sets no field: empty, blank, or only comments and empty tables.
    /// That is what a file caught between truncation and write looks like, so a reload never
    /// applies it; at startup such a file simply means the base config.
    #[error(
        "{} sets no field (it is empty or holds only comments): a reload never applies such a file, as that is how a file looks between truncation and write; to return to the defaults, set one field to its default value",
        path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl LoadError {
    /// Every problem that names a field, whatever the kind of error.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Self::Io { .. } | Self::Empty { .. } => &[],
            Self::Parse { errors, .. } => errors,
            Self::Invalid(v) => v.errors(),
        }
    }
}

struct ParseDisplay<'a>(&'a str, &'a [FieldError]);

impl fmt::Display for ParseDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot parse configuration from {}:", self.0)?;
        for e in self.1 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Builds a [`StabilityConfig`] in layers: a base (a preset), then a file, then the environment,
/// then validation.
///
/// Environment variables are `PREFIX` + the field path in capitals with `__` between parts:
/// `WSGUARD_DEDUP__TTL=60s`, `WSGUARD_CIRCUIT_BREAKER__BACKOFF__MULTIPLIER=2`. Variables with the
/// prefix but no `__` (such as `WSGUARD_ADDR`) are not configuration and are left alone; a variable
/// with `__` that names no field is an error.
///
/// ```
/// use wsguard_config::{ConfigLoader, Preset};
///
/// let config = ConfigLoader::new().preset(Preset::Testing).without_env().load()?;
/// assert_eq!(config, wsguard_config::StabilityConfig::testing());
/// # Ok::<(), wsguard_config::LoadError>(())
/// ```
#[derive(Debug, Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "load")))]
pub struct ConfigLoader {
    base: StabilityConfig,
    file: Option<PathBuf>,
    env_prefix: Option<String>,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigLoader {
    /// The default prefix of environment overrides.
    pub const ENV_PREFIX: &'static str = "WSGUARD_";

    /// Production base, no file, environment overrides with the `WSGUARD_` prefix.
    pub fn new() -> Self {
        Self {
            base: StabilityConfig::default(),
            file: None,
            env_prefix: Some(Self::ENV_PREFIX.to_owned()),
        }
    }

    /// Start from this configuration instead of the production preset.
    pub fn base(mut self, base: StabilityConfig) -> Self {
        self.base = base;
        self
    }

    /// Start from a preset.
    pub fn preset(self, preset: Preset) -> Self {
        self.base(preset.config())
    }

    /// Read this file over the base: JSON if its name ends in `.json`, TOML otherwise.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Read environment overrides with this prefix instead of `WSGUARD_`.
    pub fn env_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.env_prefix = Some(prefix.into());
        self
    }

    /// Ignore the environment.
    pub fn without_env(mut self) -> Self {
        self.env_prefix = None;
        self
    }

    /// Load and validate.
    pub fn load(&self) -> Result<StabilityConfig, LoadError> {
        self.load_text(self.read_file()?.as_deref(), FileUse::Startup)
    }

    /// The file's text, or `None` when the loader has no file.
    pub(crate) fn read_file(&self) -> Result<Option<String>, LoadError> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        std::fs::read_to_string(path)
            .map(Some)
            .map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })
    }

    /// Loads and validates with `text` standing for the file's contents, as read by
    /// [`read_file`](Self::read_file).
    pub(crate) fn load_text(
        &self,
        text: Option<&str>,
        file_use: FileUse,
    ) -> Result<StabilityConfig, LoadError> {
        let mut figment = Figment::from(Serialized::defaults(&self.base));
        let mut origin = "defaults".to_owned();
        if let (Some(path), Some(text)) = (&self.file, text) {
            let empty = || LoadError::Empty { path: path.clone() };
            if file_use == FileUse::Reload && text.trim().is_empty() {
                return Err(empty());
            }
            origin = path.display().to_string();
            let file = if is_json(path) {
                with_aliases(Json::string(text))
            } else {
                with_aliases(Toml::string(text))
            }
            .map_err(|e| parse_error(origin.clone(), *e))?;
            if file_use == FileUse::Reload && !sets_a_field(&file.value) {
                return Err(empty());
            }
            figment = figment.merge(file);
        }
        if let Some(prefix) = &self.env_prefix {
            let env = with_aliases(env_provider(prefix))
                .map_err(|e| parse_error("environment".to_owned(), *e))?;
            figment = figment.merge(env);
            origin.push_str(" and environment");
        }
        let config: StabilityConfig = figment.extract().map_err(|e| parse_error(origin, e))?;
        config.validate()?;
        Ok(config)
    }
}

/// Whether a file is read at startup or to replace a running config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileUse {
    /// A file that sets no field means the base config.
    Startup,
    /// A file that sets no field is refused with [`LoadError::Empty`].
    Reload,
}

fn sets_a_field(dict: &Dict) -> bool {
    dict.values().any(|value| match value {
        Value::Dict(_, inner) => sets_a_field(inner),
        _ => true,
    })
}

fn env_provider(prefix: &str) -> Env {
    Env::prefixed(prefix)
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

/// Field names of the original design still accepted, as (section, old name, name).
const ALIASES: &[(&str, &str, &str)] = &[
    ("circuit_breaker", "timeout_seconds", "timeout"),
    ("dedup", "ttl_seconds", "ttl"),
];

/// Reads `provider` and renames the original design's field names to the current ones. Serde
/// aliases alone would clash with the same field coming from the base layer ("duplicate field").
fn with_aliases(provider: impl Provider) -> Result<Serialized<Dict>, Box<figment::Error>> {
    let mut data = provider.data().map_err(Box::new)?;
    let mut dict = data.remove(&Profile::Default).unwrap_or_default();
    for (section, old, new) in ALIASES {
        if let Some(Value::Dict(_, fields)) = dict.get_mut(*section)
            && let Some(value) = fields.remove(*old)
        {
            if fields.contains_key(*new) {
                let mut err = figment::Error::from(format!(
                    "both `{old}` and `{new}` are set; `{old}` is the older name of `{new}`, keep one"
                ));
                err.path = vec![(*section).to_owned(), (*old).to_owned()];
                return Err(Box::new(err));
            }
            fields.insert((*new).to_owned(), value);
        }
    }
    Ok(Serialized::defaults(dict))
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

fn parse_error(origin: String, err: figment::Error) -> LoadError {
    let errors = err
        .into_iter()
        .map(|e| {
            let mut path = e.path.join(".");
            let message = match &e.kind {
                figment::error::Kind::UnknownField(_, expected) => {
                    format!("unknown field; expected one of: {}", expected.join(", "))
                }
                kind => kind.to_string(),
            };
            if path.is_empty() {
                path = "(top level)".to_owned();
            }
            FieldError { path, message }
        })
        .collect();
    LoadError::Parse { origin, errors }
}

fn from_str_with(text: &str, json: bool) -> Result<StabilityConfig, LoadError> {
    let origin = || "string".to_owned();
    let layer = if json {
        with_aliases(Json::string(text))
    } else {
        with_aliases(Toml::string(text))
    }
    .map_err(|e| parse_error(origin(), *e))?;
    let config: StabilityConfig = Figment::from(Serialized::defaults(StabilityConfig::default()))
        .merge(layer)
        .extract()
        .map_err(|e| parse_error(origin(), e))?;
    config.validate()?;
    Ok(config)
}

impl StabilityConfig {
    /// Loads a file (TOML; JSON if its name ends in `.json`) over the defaults, then the
    /// `WSGUARD_` environment overrides, and validates the result.
    #[cfg_attr(docsrs, doc(cfg(feature = "load")))]
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        ConfigLoader::new().file(path.as_ref()).load()
    }

    /// The defaults with the `WSGUARD_` environment overrides, validated.
    #[cfg_attr(docsrs, doc(cfg(feature = "load")))]
    pub fn from_env() -> Result<Self, LoadError> {
        ConfigLoader::new().load()
    }

    /// Parses TOML over the defaults and validates; the environment is not read.
    #[cfg_attr(docsrs, doc(cfg(feature = "load")))]
    pub fn from_toml_str(text: &str) -> Result<Self, LoadError> {
        from_str_with(text, false)
    }

    /// Parses JSON over the defaults and validates; the environment is not read.
    #[cfg_attr(docsrs, doc(cfg(feature = "load")))]
    pub fn from_json_str(text: &str) -> Result<Self, LoadError> {
        from_str_with(text, true)
    }
}
