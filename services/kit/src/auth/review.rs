//! ServiceAccount tokens, checked with the cluster's TokenReview API: in Kubernetes a
//! caller presents the token its pod already has, and nobody hands out static ones.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};

use super::{AuthError, Credential, Identity, RoleTable, fingerprint, role_table, roles_of};

/// Answers kept at most, so a flood of made-up tokens costs memory in bounds.
const CACHE_ENTRIES: usize = 10_000;

/// The `server.auth.token_review` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenReviewConfig {
    /// The cluster; unset, the pod's own service account (or the default kubeconfig).
    pub kubeconfig: Option<PathBuf>,
    /// Audiences a token must be bound to; a token minted for anything else is refused.
    pub audiences: Vec<String>,
    /// Roles by user name (`system:serviceaccount:<namespace>:<name>`) or group (e.g.
    /// `system:serviceaccounts:<namespace>`): a caller holds the roles of its name and of
    /// each of its groups.
    pub roles: BTreeMap<String, Vec<String>>,
    /// How long an answer is reused, so a busy caller costs the API server one review
    /// per period; a revoked token keeps working at most this long.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            audiences: vec!["ficus".to_owned()],
            roles: BTreeMap::new(),
            cache_ttl: Duration::from_secs(10),
        }
    }
}

/// Answers by token digest: who the cluster said it was (`None`: nobody), and when.
type Answers = Cache<[u8; 32], (Option<Identity>, Instant)>;

/// Checks tokens with TokenReview; cheap to clone.
#[derive(Clone)]
pub(crate) struct TokenReviewer {
    api: Api<TokenReview>,
    audiences: Vec<String>,
    roles: std::sync::Arc<RoleTable>,
    ttl: Duration,
    /// Token digest to the answer and when it was given; refusals are kept too, so that
    /// guessing is not a way to load the API server.
    cache: std::sync::Arc<Answers>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").field("audiences", &self.audiences).finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer for `config`; refuses role names that are not roles.
    pub(crate) async fn new(config: &TokenReviewConfig) -> Result<Self, AuthError> {
        let roles = role_table("server.auth.token_review.roles", &config.roles)?;
        let client = crate::kubernetes::client(config.kubeconfig.as_deref()).await?;
        Ok(Self {
            api: Api::all(client),
            audiences: config.audiences.clone(),
            roles: std::sync::Arc::new(roles),
            ttl: config.cache_ttl,
            cache: std::sync::Arc::new(Cache::new(CACHE_ENTRIES)),
        })
    }

    /// The caller `token` belongs to, `None` when the cluster does not vouch for it, or
    /// why the cluster could not be asked.
    pub(crate) async fn identify(&self, token: &str) -> Result<Option<Identity>, String> {
        let key = fingerprint(token);
        if let Some((answer, at)) = self.cache.get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(answer);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: Some(self.audiences.clone()) },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|error| format!("the cluster could not check the token: {error}"))?;
        let status = answer.status.unwrap_or_default();
        let identity = if status.authenticated == Some(true) {
            let user = status.user.unwrap_or_default();
            let name = user.username.unwrap_or_default();
            let subjects = std::iter::once(name.as_str()).chain(user.groups.iter().flatten().map(String::as_str));
            let roles = roles_of(&self.roles, subjects);
            Some(Identity { user: name, roles, credential: Credential::ServiceAccount })
        } else {
            None
        };
        self.cache.insert(key, (identity.clone(), Instant::now()));
        Ok(identity)
    }
}
