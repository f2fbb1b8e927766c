//! Data planes other than the embedded proxy that ficus can drive with its routes.
//!
//! An adapter turns the route table into another proxy's configuration and applies it
//! safely: a configuration the proxy refuses never replaces the one it serves.

pub mod kubernetes;
pub mod nginx;

use std::{path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use self::nginx::{NginxAdapter, NginxConfig, Reload};
use crate::table::LiveTable;

/// Settings of a front nginx that traffic keeps in step with its routes, the `nginx`
/// section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NginxSettings {
    /// The include file ficus owns, e.g. `/etc/nginx/conf.d/ficus.conf`.
    pub path: PathBuf,
    /// The nginx binary.
    #[serde(default = "default_nginx_binary")]
    pub binary: PathBuf,
    /// The main configuration, passed as `-c`; nginx's built-in one when unset.
    #[serde(default)]
    pub main_config: Option<PathBuf>,
    /// Extra options given to every nginx command, e.g. `["-e", "/var/log/nginx/error.log"]`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Reload by SIGHUP to the pid in this file instead of `nginx -s reload`.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// `listen` parameters of the rendered servers; empty renders upstreams only.
    #[serde(default = "default_nginx_listen")]
    pub listen: Vec<String>,
}

fn default_nginx_binary() -> PathBuf {
    PathBuf::from("nginx")
}

fn default_nginx_listen() -> Vec<String> {
    vec!["80".to_owned()]
}

impl From<&NginxSettings> for NginxConfig {
    fn from(settings: &NginxSettings) -> Self {
        let mut config = NginxConfig::new(settings.path.clone());
        config.binary = settings.binary.clone();
        config.main_config = settings.main_config.clone();
        config.global_args = settings.args.iter().map(Into::into).collect();
        if let Some(pid_file) = &settings.pid_file {
            config.reload = Reload::PidFile(pid_file.clone());
        }
        config.render.listen = settings.listen.clone();
        config
    }
}

/// Applies the route table to nginx now and after every change until `shutdown`. Changes
/// that arrive while an apply runs are folded into the next one; a refused configuration
/// is logged and nginx keeps serving the last one it accepted.
pub async fn follow_nginx(adapter: Arc<NginxAdapter>, table: Arc<LiveTable>, shutdown: CancellationToken) {
    let mut changes = table.subscribe();
    loop {
        let routes: Vec<_> = table.load().routes().map(|active| active.route.clone()).collect();
        match adapter.apply(&routes).await {
            Ok(()) => tracing::info!(routes = routes.len(), "nginx follows the route table"),
            Err(error) => tracing::error!(%error, "nginx keeps its previous configuration"),
        }
        tokio::select! {
            change = changes.recv() => match change {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    // Fold every change already queued into this one apply.
                    while changes.try_recv().is_ok() {}
                }
                Err(RecvError::Closed) => return,
            },
            () = shutdown.cancelled() => return,
        }
    }
}
