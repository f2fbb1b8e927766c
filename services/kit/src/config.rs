//! Layered configuration: defaults < file < environment.
//!
//! The file is `ficus.toml` in the working directory, or the one named by `--config` or
//! `FICUS_CONFIG` (which must then exist). Environment variables start with `FICUS_` and
//! nest with `__`, so `FICUS_SERVER__GRPC_ADDR` sets `server.grpc_addr`. A value that does
//! not fit fails at start with the key and the reason, never later at first use.

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Serialize, de::DeserializeOwned};

/// The file read when none is named.
pub const DEFAULT_FILE: &str = "ficus.toml";

/// Names a configuration file explicitly.
pub const FILE_ENV: &str = "FICUS_CONFIG";

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value has the wrong type or shape; the message names the key and its source.
    #[error("invalid configuration: {0}")]
    Parse(Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("invalid configuration: `{key}`: {reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `server.grpc_addr`.
        key: String,
        /// Why the value is refused.
        reason: String,
    },
    /// A named file does not exist.
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        Self::Parse(Box::new(error))
    }
}

impl ConfigError {
    /// A refused value at `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), reason: reason.into() }
    }
}

/// A service's configuration: deserializable, with defaults, and checked as a whole.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    /// Refuses values that parse but make no sense (e.g. an empty store location).
    fn validate(&self) -> Result<(), ConfigError>;
}

/// The file and environment layers, without defaults. `file` is an explicitly named
/// file; otherwise `FICUS_CONFIG`, otherwise `ficus.toml` if present.
pub fn sources(file: Option<&Path>) -> Result<Figment, ConfigError> {
    let named = file.map(Path::to_path_buf).or_else(|| std::env::var_os(FILE_ENV).map(PathBuf::from));
    let figment = match named {
        Some(path) if !path.is_file() => return Err(ConfigError::MissingFile(path)),
        Some(path) => Figment::new().merge(Toml::file_exact(path)),
        None => Figment::new().merge(Toml::file(DEFAULT_FILE)),
    };
    Ok(figment.merge(Env::prefixed("FICUS_").split("__").ignore(&["config"])))
}

/// Extracts `C` from `layers` (or from its `section`, for `ficus up`) on top of
/// `C::default()`, then validates it.
pub fn extract<C: ServiceConfig>(layers: &Figment, section: Option<&str>) -> Result<C, ConfigError> {
    let layers = match section {
        Some(section) => layers.focus(section),
        None => layers.clone(),
    };
    let config: C = Figment::from(Serialized::defaults(C::default())).merge(layers).extract()?;
    config.validate()?;
    Ok(config)
}

/// Loads `C` from defaults, the file and the environment.
pub fn load<C: ServiceConfig>(file: Option<&Path>) -> Result<C, ConfigError> {
    extract(&sources(file)?, None)
}

/// Checks a `store` setting: a `redis://` or `rediss://` URL with a host, or a directory.
pub fn check_store(key: &str, location: &str) -> Result<(), ConfigError> {
    let location = location.trim();
    if location.is_empty() {
        return Err(ConfigError::invalid(key, "must be a directory or a redis:// or rediss:// URL"));
    }
    if let Some(rest) = location.strip_prefix("redis://").or_else(|| location.strip_prefix("rediss://")) {
        let authority = rest.split('/').next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() {
            return Err(ConfigError::invalid(key, "the Redis URL has no host"));
        }
    } else if location.contains("://") {
        return Err(ConfigError::invalid(
            key,
            "only redis:// and rediss:// URLs are stores; anything else is a directory",
        ));
    }
    Ok(())
}

/// Checks the address of another ficus service: `host:port` or `http(s)://host:port`.
pub fn check_peer(key: &str, address: &str) -> Result<(), ConfigError> {
    let authority = address.strip_prefix("http://").or_else(|| address.strip_prefix("https://")).unwrap_or(address);
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0) => Ok(()),
        _ => Err(ConfigError::invalid(key, format!("`{address}` is not host:port"))),
    }
}
