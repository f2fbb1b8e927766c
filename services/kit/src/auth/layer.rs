//! The check every gRPC call passes: authenticate the bearer token, authorize the method,
//! and write the audit event.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response, header::AUTHORIZATION};
use rustls::pki_types::CertificateDer;
use tonic::Status;
use tower::{Layer, Service};

use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{Access, Authenticator, Identity, Role, access, audit::ResourceNote};
use crate::{server::response_code, tls::TlsPeer};

/// Adds [`Authorize`] to a service.
#[derive(Clone, Debug)]
pub(crate) struct AuthLayer {
    authenticator: Authenticator,
}

impl AuthLayer {
    pub(crate) fn new(authenticator: Authenticator) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner, authenticator: self.authenticator.clone() }
    }
}

/// Lets a call through only when its caller holds the role its method needs.
#[derive(Clone, Debug)]
pub(crate) struct Authorize<S> {
    inner: S,
    authenticator: Authenticator,
}

impl<S, B, R> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let needed = match access(&method) {
            Access::Public => return Box::pin(self.inner.call(request)),
            Access::Role(role) => role,
        };
        let token = bearer(&request).map(str::to_owned);
        let certificate = client_certificate(&request);
        // The server span of the call, which the audit attributes go on.
        let span = tracing::Span::current();
        let authenticator = self.authenticator.clone();
        // The service that was polled ready goes with the call; a fresh clone stays.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            let identity = match (token, certificate) {
                (Some(token), _) => match authenticator.identify(&token).await {
                    Ok(Some(identity)) => identity,
                    Ok(None) => return Ok(refuse(&span, &method, None, Status::unauthenticated("unknown token"))),
                    Err(reason) => return Ok(refuse(&span, &method, None, Status::unavailable(reason))),
                },
                (None, Some(certificate)) => match authenticator.identify_certificate(&certificate) {
                    Ok(identity) => identity,
                    Err(reason) => return Ok(refuse(&span, &method, None, Status::unauthenticated(reason))),
                },
                (None, None) => {
                    let status = Status::unauthenticated(
                        "no credential: send `authorization: Bearer <token>` or a client certificate",
                    );
                    return Ok(refuse(&span, &method, None, status));
                }
            };
            if !identity.may(needed) {
                let status = Status::permission_denied(format!(
                    "`{}` lacks the role `{needed}` that {method} needs",
                    identity.user
                ));
                return Ok(refuse(&span, &method, Some(&identity), status));
            }
            let audited = changes_something(needed, &method);
            let user = identity.user.clone();
            let authenticated_by = identity.credential.name();
            span.set_attribute("enduser.id", user.clone());
            span.set_attribute("ficus.auth.credential", authenticated_by);
            let note = ResourceNote::default();
            request.extensions_mut().insert(identity);
            request.extensions_mut().insert(note.clone());
            let result = inner.call(request).await;
            if audited {
                let outcome = crate::status::code_name(response_code(&result));
                let resource = note.resource();
                span.set_attribute("ficus.audit.resource", resource.to_owned());
                span.set_attribute("ficus.audit.outcome", outcome);
                tracing::info!(target: "ficus::audit", user, authenticated_by, rpc = method, resource, outcome, "call");
            }
            result
        })
    }
}

/// Whether a call with this need changes something, and so is audited: everything beyond
/// reads, except reading sessions, which is an application's every request.
fn changes_something(needed: Role, method: &str) -> bool {
    match needed {
        Role::Viewer => false,
        Role::App => !method.ends_with("/GetSession"),
        Role::Operator | Role::Admin => true,
    }
}

/// The token of an `authorization: Bearer <token>` header, if the request has one.
fn bearer<B>(request: &Request<B>) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The leaf certificate the client presented in the TLS handshake, already verified
/// against `server.tls.client_ca`.
fn client_certificate<B>(request: &Request<B>) -> Option<Arc<CertificateDer<'static>>> {
    request.extensions().get::<TlsPeer>()?.certificate.clone()
}

/// The answer to a refused call, which never reaches the service; audited, and the
/// refusal set on the call's span.
fn refuse<R: Default>(span: &tracing::Span, method: &str, identity: Option<&Identity>, status: Status) -> Response<R> {
    let user = identity.map_or("-", |identity| identity.user.as_str());
    let authenticated_by = identity.map_or("none", |identity| identity.credential.name());
    let outcome = crate::status::code_name(status.code());
    let reason = status.message();
    if identity.is_some() {
        span.set_attribute("enduser.id", user.to_owned());
    }
    span.set_attribute("ficus.auth.credential", authenticated_by);
    span.set_attribute("ficus.audit.outcome", outcome);
    tracing::warn!(target: "ficus::audit", user, authenticated_by, rpc = method, outcome, reason, "refused");
    status.into_http::<R>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> Request<()> {
        Request::builder().header(AUTHORIZATION, value).body(()).expect("request")
    }

    #[test]
    fn only_well_formed_bearer_headers_carry_a_token() {
        assert_eq!(bearer(&with_authorization("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&with_authorization("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&with_authorization("Basic abc")), None);
        assert_eq!(bearer(&with_authorization("Bearer ")), None);
        assert_eq!(bearer(&with_authorization("Bearerabc")), None);
        assert_eq!(bearer(&Request::new(())), None);
    }

    proptest::proptest! {
        /// Any header value a caller can send is a token or no token, never a panic; a
        /// token found is the part after the scheme, trimmed and never empty.
        #[test]
        fn any_authorization_header_is_read_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let Ok(value) = http::HeaderValue::from_bytes(&bytes) else { return Ok(()) };
            let mut request = Request::new(());
            request.headers_mut().insert(AUTHORIZATION, value);
            if let Some(token) = bearer(&request) {
                proptest::prop_assert!(!token.is_empty() && token == token.trim());
            }
        }
    }

    #[test]
    fn mutations_are_audited_and_reads_are_not() {
        assert!(changes_something(Role::Operator, "ficus.traffic.v1.TrafficControl/SetWeights"));
        assert!(!changes_something(Role::Viewer, "ficus.traffic.v1.TrafficControl/GetRoute"));
        assert!(changes_something(Role::App, "ficus.sessions.v1.SessionStore/UpdateSession"));
        assert!(!changes_something(Role::App, "ficus.sessions.v1.SessionStore/GetSession"));
    }
}
