//! Who may call what: bearer tokens from a file or vouched for by the cluster, roles, and
//! the one check every gRPC call of a service passes before any work is done.
//!
//! # Tokens
//!
//! `server.auth.token_file` names a file in kube-apiserver's `--token-auth-file` format, one
//! caller per line: `token,user,uid,"group1,group2"`. The groups are the caller's roles. The
//! file is re-read when it changes (a rotated Kubernetes Secret), and a file that no longer
//! parses keeps the last good one in force. Tokens are kept only as SHA-256 digests, and a
//! presented token is looked up by its digest, so neither a comparison nor a lookup takes
//! time that depends on how much of a real token the caller guessed.
//!
//! With `server.auth.token_review`, a token the file does not know is sent to the cluster's
//! TokenReview API, bound to the configured audiences; the caller's roles are those its
//! ServiceAccount name or groups are mapped to. Answers are cached briefly, refusals too.
//!
//! # Roles
//!
//! - `viewer`: every read (methods named `Get*`, `List*`, `Watch*`, `Preview*`) and
//!   reflection;
//! - `operator`: viewer, plus every other method of planner, traffic and analysis (create,
//!   promote, pause, resume, abort, put and delete routes, set weights, analyze, start and
//!   stop runs);
//! - `app`: the session store, nothing else;
//! - `admin`: everything.
//!
//! # Client certificates
//!
//! With mutual TLS (`server.tls.client_ca`), a caller that sends no token is who its
//! certificate names: the subject's common name, or else a URI or DNS subject alternative
//! name, whichever `server.auth.mtls_roles` maps to roles. A token, when sent, wins.
//!
//! Health checks need no credential. No credential, or one nobody vouches for, is
//! UNAUTHENTICATED; a known caller without the role is PERMISSION_DENIED naming the role;
//! a cluster that cannot be asked is UNAVAILABLE.
//! A refused call never reaches the service, so it changes nothing.
//!
//! # Audit
//!
//! Every refusal, and every call that changes something (any call beyond `viewer`, except
//! session reads), is one structured event with target `ficus::audit`: who, how they were
//! authenticated, the method, the resource the handler noted ([`audit::note`]), and the
//! outcome. The same attributes go on the call's server span (`enduser.id`,
//! `ficus.auth.credential`, `ficus.audit.resource`, `ficus.audit.outcome`), so traces
//! carry them to wherever spans are exported.

pub mod audit;
mod certificate;
mod layer;
mod review;
mod tokens;

use std::{collections::BTreeMap, fmt, path::PathBuf};

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use self::certificate::CertificateRoles;
pub(crate) use self::layer::AuthLayer;
use self::review::TokenReviewer;
pub(crate) use self::tokens::read as read_token_file;
pub use self::{
    review::TokenReviewConfig,
    tokens::{TokenFile, TokenFileError},
};

/// Authentication settings, the `server.auth` section. Without a token file or token
/// review every caller is let in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Callers and their roles, in kube-apiserver's token file format.
    pub token_file: Option<PathBuf>,
    /// ServiceAccount tokens checked with the cluster's TokenReview API, for tokens the
    /// file does not know.
    pub token_review: Option<TokenReviewConfig>,
    /// A file holding the bearer token this service presents when it calls its peers
    /// (planner to traffic and analysis, analysis to traffic).
    pub peer_token_file: Option<PathBuf>,
    /// Roles by client certificate name (its subject's CN, or a URI or DNS SAN), for
    /// mutual TLS (`server.tls.client_ca`).
    pub mtls_roles: BTreeMap<String, Vec<String>>,
    /// Serve a non-loopback address with no authentication configured, letting every
    /// caller in. Only for a service behind something that authenticates for it; without
    /// it such a service refuses to start.
    pub allow_unauthenticated: bool,
}

/// Why authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// `server.auth.token_file` cannot be used.
    #[error("server.auth.token_file: {0}")]
    TokenFile(#[from] TokenFileError),
    /// The cluster of `server.auth.token_review` cannot be reached.
    #[error("server.auth.token_review: {0}")]
    Cluster(#[from] crate::kubernetes::KubernetesError),
    /// A role mapping names something that is not a role.
    #[error("{key}.{subject}: `{role}` is not a role (viewer, operator, app, admin)")]
    Role {
        /// The mapping, e.g. `server.auth.mtls_roles`.
        key: &'static str,
        /// Whose roles.
        subject: String,
        /// The name that is not a role.
        role: String,
    },
}

/// Roles by subject, from a mapping in configuration whose key is `key`.
fn role_table(key: &'static str, names: &BTreeMap<String, Vec<String>>) -> Result<RoleTable, AuthError> {
    names
        .iter()
        .map(|(subject, roles)| {
            let roles = roles
                .iter()
                .map(|role| {
                    Role::from_group(role).ok_or_else(|| AuthError::Role {
                        key,
                        subject: subject.clone(),
                        role: role.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((subject.clone(), roles))
        })
        .collect()
}

/// Roles by user name, group or certificate name.
type RoleTable = BTreeMap<String, Vec<Role>>;

/// The roles `subjects` hold together, each once.
fn roles_of<'a>(table: &RoleTable, subjects: impl IntoIterator<Item = &'a str>) -> Vec<Role> {
    let mut roles: Vec<Role> =
        subjects.into_iter().filter_map(|subject| table.get(subject)).flatten().copied().collect();
    roles.sort_unstable();
    roles.dedup();
    roles
}

/// Who a caller is: by bearer token, from the token file first, then the cluster's
/// TokenReview; or by client certificate. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Authenticator {
    file: Option<TokenFile>,
    review: Option<TokenReviewer>,
    certificates: Option<CertificateRoles>,
}

impl Authenticator {
    /// The authenticator `config` describes, following its token file until `stop`;
    /// `None` when it describes none, and every caller is let in.
    pub async fn start(config: &AuthConfig, stop: &CancellationToken) -> Result<Option<Self>, AuthError> {
        let file = config.token_file.as_deref().map(TokenFile::load).transpose()?;
        if let Some(file) = &file {
            tokio::spawn(file.clone().follow(stop.clone()));
        }
        let review = match &config.token_review {
            Some(review) => Some(TokenReviewer::new(review).await?),
            None => None,
        };
        let certificates = (!config.mtls_roles.is_empty())
            .then(|| role_table("server.auth.mtls_roles", &config.mtls_roles).map(CertificateRoles::new))
            .transpose()?;
        let any = file.is_some() || review.is_some() || certificates.is_some();
        Ok(any.then_some(Self { file, review, certificates }))
    }

    /// The caller a client certificate (DER) names; `Err` says why it names nobody.
    pub fn identify_certificate(&self, certificate: &[u8]) -> Result<Identity, String> {
        match &self.certificates {
            Some(certificates) => certificates.identify(certificate),
            None => Err("client certificates are not mapped to roles here (server.auth.mtls_roles)".to_owned()),
        }
    }

    /// The caller `token` belongs to, `None` when nobody vouches for it, or why the
    /// cluster could not be asked.
    pub async fn identify(&self, token: &str) -> Result<Option<Identity>, String> {
        if let Some(identity) = self.file.as_ref().and_then(|file| file.identify(token)) {
            return Ok(Some(identity));
        }
        match &self.review {
            Some(review) => review.identify(token).await,
            None => Ok(None),
        }
    }
}

/// The digest a token is kept and looked up by: a lookup by digest takes no time that
/// depends on how much of a real token a guess got right.
fn fingerprint(token: &str) -> [u8; 32] {
    let mut key = [0; 32];
    key.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    key
}

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and changes to rollouts, routes and analysis runs.
    Operator,
    /// The session store.
    App,
    /// Everything.
    Admin,
}

impl Role {
    /// The role a token file group names, if any; other groups are ignored.
    pub fn from_group(group: &str) -> Option<Self> {
        match group {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "app" => Some(Self::App),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Whether holding `self` allows what `needed` allows.
    pub fn covers(self, needed: Role) -> bool {
        match self {
            Self::Admin => true,
            Self::Operator => matches!(needed, Self::Operator | Self::Viewer),
            Self::Viewer => needed == Self::Viewer,
            Self::App => needed == Self::App,
        }
    }

    /// The name used in token files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::App => "app",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An authenticated caller, added to each request's extensions for the handlers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user name: from the token file, the cluster, or the client certificate.
    pub user: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// How the caller proved who it is.
    pub credential: Credential,
}

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token from the token file.
    Token,
    /// A ServiceAccount token the cluster vouched for.
    ServiceAccount,
    /// A client certificate.
    Certificate,
}

impl Credential {
    /// The name audit events use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::ServiceAccount => "service_account",
            Self::Certificate => "certificate",
        }
    }
}

impl Identity {
    /// Whether any of the caller's roles covers `needed`.
    pub fn may(&self, needed: Role) -> bool {
        self.roles.iter().any(|role| role.covers(needed))
    }
}

/// What a method requires of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health checks, which probes and load balancers make without credentials.
    Public,
    /// A caller holding a role that covers this one.
    Role(Role),
}

/// Prefixes of the methods that only read.
const READ_PREFIXES: [&str; 4] = ["Get", "List", "Watch", "Preview"];

/// What calling `path` (`/package.Service/Method`) requires: the one table of the roles
/// above, for every service. A method is a read by its name, a convention every ficus API
/// keeps; anything else, including a path no service has, needs `operator`.
pub fn access(path: &str) -> Access {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    match service {
        "grpc.health.v1.Health" => Access::Public,
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            Access::Role(Role::Viewer)
        }
        "ficus.sessions.v1.SessionStore" => Access::Role(Role::App),
        _ if READ_PREFIXES.iter().any(|prefix| method.starts_with(prefix)) => Access::Role(Role::Viewer),
        _ => Access::Role(Role::Operator),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_covers_what_the_table_says() {
        use Role::*;
        let covers = |role: Role| {
            [Viewer, Operator, App, Admin].into_iter().filter(|needed| role.covers(*needed)).collect::<Vec<_>>()
        };
        assert_eq!(covers(Viewer), [Viewer]);
        assert_eq!(covers(Operator), [Viewer, Operator]);
        assert_eq!(covers(App), [App]);
        assert_eq!(covers(Admin), [Viewer, Operator, App, Admin]);
    }

    #[test]
    fn methods_need_the_role_their_name_says() {
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Public);
        assert_eq!(access("/ficus.planner.v1.Planner/GetRollout"), Access::Role(Role::Viewer));
        assert_eq!(access("/ficus.planner.v1.Planner/PreviewPlan"), Access::Role(Role::Viewer));
        assert_eq!(access("/ficus.planner.v1.Planner/Abort"), Access::Role(Role::Operator));
        assert_eq!(access("/ficus.analysis.v1.Analysis/Analyze"), Access::Role(Role::Operator));
        assert_eq!(access("/ficus.sessions.v1.SessionStore/GetSession"), Access::Role(Role::App));
        assert_eq!(access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Access::Role(Role::Viewer));
        assert_eq!(access("/made.up/Thing"), Access::Role(Role::Operator));
        assert_eq!(access("nonsense"), Access::Role(Role::Operator));
    }
}
