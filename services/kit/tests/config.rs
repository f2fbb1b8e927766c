//! Configuration precedence: defaults < file < environment, and clear errors.

// figment::Jail fixes the error type of its closures.
#![allow(clippy::result_large_err)]

use ficus_kit::{
    config::{self, ConfigError, ServiceConfig},
    server::ServerConfig,
};
use figment::Jail;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Sample {
    server: ServerConfig,
    store: String,
    limit: u32,
}

impl Default for Sample {
    fn default() -> Self {
        Self { server: ServerConfig::on_ports(7100, 9100), store: "data/sample".into(), limit: 10 }
    }
}

impl ServiceConfig for Sample {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        config::check_store("store", &self.store)
    }
}

fn load() -> Result<Sample, ConfigError> {
    config::load::<Sample>(None)
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    Jail::expect_with(|_| {
        assert_eq!(load().map_err(|e| e.to_string())?, Sample::default());
        Ok(())
    });
}

#[test]
fn the_file_overrides_defaults_and_the_environment_overrides_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "ficus.toml",
            "store = \"from-file\"\nlimit = 20\n[server]\ngrpc_addr = \"127.0.0.1:7200\"\n",
        )?;
        jail.set_env("FICUS_LIMIT", "30");
        jail.set_env("FICUS_SERVER__ADMIN_ADDR", "127.0.0.1:9300");
        let loaded = load().map_err(|e| e.to_string())?;
        assert_eq!(loaded.store, "from-file", "file beats default");
        assert_eq!(loaded.limit, 30, "environment beats file");
        assert_eq!(loaded.server.grpc_addr.to_string(), "127.0.0.1:7200");
        assert_eq!(loaded.server.admin_addr.to_string(), "127.0.0.1:9300", "nested keys split on __");
        assert_eq!(
            loaded.server.grace_period,
            ServerConfig::on_ports(0, 0).grace_period,
            "untouched keys keep defaults"
        );
        Ok(())
    });
}

#[test]
fn a_file_named_by_ficus_config_replaces_the_default_file() {
    Jail::expect_with(|jail| {
        jail.create_file("ficus.toml", "limit = 20\n")?;
        jail.create_file("other.toml", "limit = 40\n")?;
        jail.set_env("FICUS_CONFIG", "other.toml");
        assert_eq!(load().map_err(|e| e.to_string())?.limit, 40);
        Ok(())
    });
}

#[test]
fn a_named_file_that_does_not_exist_is_an_error() {
    Jail::expect_with(|_| {
        let error = config::load::<Sample>(Some("missing.toml".as_ref())).expect_err("missing file refused");
        assert!(matches!(error, ConfigError::MissingFile(_)), "{error}");
        Ok(())
    });
}

#[test]
fn a_value_of_the_wrong_type_names_the_key_and_its_source() {
    Jail::expect_with(|jail| {
        jail.set_env("FICUS_SERVER__GRPC_ADDR", "not-an-address");
        let message = load().expect_err("bad address refused").to_string();
        assert!(message.to_lowercase().contains("server.grpc_addr"), "{message}");
        assert!(message.contains("FICUS_"), "names the environment as the source: {message}");
        Ok(())
    });
}

#[test]
fn a_value_that_parses_but_cannot_work_names_the_key() {
    Jail::expect_with(|jail| {
        jail.set_env("FICUS_STORE", "postgres://db");
        let message = load().expect_err("unsupported store refused").to_string();
        assert!(message.contains("`store`"), "{message}");
        jail.set_env("FICUS_STORE", "redis://");
        let message = load().expect_err("hostless URL refused").to_string();
        assert!(message.contains("no host"), "{message}");
        jail.set_env("FICUS_STORE", "redis://:secret@localhost:6379/0");
        assert!(load().is_ok(), "a full URL is accepted");
        Ok(())
    });
}

#[test]
fn a_section_is_read_on_its_own_for_ficus_up() {
    Jail::expect_with(|jail| {
        jail.create_file("ficus.toml", "limit = 20\n[sample]\nlimit = 50\n")?;
        jail.set_env("FICUS_SAMPLE__STORE", "section-store");
        let layers = config::sources(None).map_err(|e| e.to_string())?;
        let loaded: Sample = config::extract(&layers, Some("sample")).map_err(|e| e.to_string())?;
        assert_eq!(loaded.limit, 50);
        assert_eq!(loaded.store, "section-store");
        Ok(())
    });
}

#[test]
fn tls_settings_that_mean_nothing_are_refused_naming_the_key() {
    for (file, key) in [
        (
            "[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_cert_optional = true\n",
            "server.tls.client_cert_optional",
        ),
        ("[server.auth.mtls_roles]\ndeployer = [\"operator\"]\n", "server.auth.mtls_roles"),
    ] {
        Jail::expect_with(|jail| {
            jail.create_file("ficus.toml", file)?;
            match load() {
                Err(ConfigError::Invalid { key: refused, .. }) => assert_eq!(refused, key),
                other => panic!("{file:?} was not refused: {other:?}"),
            }
            Ok(())
        });
    }
}
