//! ServiceAccount tokens checked with TokenReview against a real kube-apiserver: a token
//! mapped to a role gets in, one from another namespace is denied, and one minted for
//! another audience is not accepted at all.

use std::{collections::BTreeMap, time::Duration};

use ficus_kit::{
    auth::TokenReviewConfig,
    client::{self, BearerToken},
    server::{Server, ServerConfig},
};
use ficus_proto::sessions::v1::{
    GetSessionRequest,
    session_store_client::SessionStoreClient,
    session_store_server::{SessionStore, SessionStoreServer},
};
use ficus_testkit::KubeApiServer;
use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// A session store whose own methods all answer UNIMPLEMENTED: what matters is whether a
/// call gets that far.
struct Empty;

impl SessionStore for Empty {}

/// A token of ServiceAccount `deployer` in `namespace`, bound to `audience`.
async fn token(kube: &KubeApiServer, namespace: &str, audience: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(kube.client().await, namespace);
    if accounts.get_opt("deployer").await.expect("read the account").is_none() {
        let account = serde_json::from_value(serde_json::json!({"metadata": {"name": "deployer"}})).expect("account");
        accounts.create(&PostParams::default(), &account).await.expect("create the account");
    }
    let request: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"audiences": [audience], "expirationSeconds": 600}}))
            .expect("token request");
    let minted = accounts.create_token_request("deployer", &PostParams::default(), &request).await.expect("token");
    minted.status.and_then(|status| status.token).expect("a minted token")
}

#[tokio::test]
async fn service_account_tokens_get_the_roles_of_their_account_and_audience() {
    let kube = KubeApiServer::start().await;
    for namespace in ["shop", "other"] {
        kube.create_namespace(namespace).await;
    }
    let mut config = ServerConfig::ephemeral();
    config.auth.token_review = Some(TokenReviewConfig {
        kubeconfig: Some(kube.kubeconfig().to_owned()),
        roles: BTreeMap::from([("system:serviceaccount:shop:deployer".to_owned(), vec!["app".to_owned()])]),
        ..TokenReviewConfig::default()
    });
    let shutdown = CancellationToken::new();
    let routes = tonic::service::Routes::new(SessionStoreServer::new(Empty));
    let running = Server::new("ficus.test.Empty", config, routes).start(shutdown.clone()).await.expect("starts");

    let call = |token: String| {
        let address = running.grpc_addr.to_string();
        async move {
            let token = BearerToken::new(&token).expect("a token fit for a header");
            let channel = client::connect_with(
                &address,
                Duration::from_secs(10),
                &client::Credentials { token: Some(token), tls: None },
            )
            .expect("address");
            let request = GetSessionRequest { id: "s".into(), touch: false };
            SessionStoreClient::new(channel).get_session(request).await.expect_err("an empty store answers nothing")
        }
    };
    let shop = call(token(&kube, "shop", "ficus").await).await;
    assert_eq!(shop.code(), Code::Unimplemented, "the mapped account got through: {shop:?}");
    let other = call(token(&kube, "other", "ficus").await).await;
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    assert!(other.message().contains("system:serviceaccount:other:deployer"), "{other:?}");
    let elsewhere = call(token(&kube, "shop", "vault").await).await;
    assert_eq!(elsewhere.code(), Code::Unauthenticated, "a token for another audience: {elsewhere:?}");
    let forged = call("not.a.jwt".to_owned()).await;
    assert_eq!(forged.code(), Code::Unauthenticated, "{forged:?}");

    shutdown.cancel();
    running.wait().await.expect("stops cleanly");
}
