//! Sending a request to the chosen backend, and a copy to the mirror.

use std::{net::SocketAddr, time::Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{ProxyBody, Worker, plain, upstream::Sent};
use crate::{
    stats::{Half, Outcome},
    table::ActiveRoute,
};

/// Headers that describe one hop, not the request, and so are never forwarded (RFC 9110
/// §7.6.1); the proxy credentials were meant for this proxy, not the backend.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The host a request is for, without port: from `Host` (HTTP/1.1) or the URI (HTTP/2).
pub(super) fn request_host<B>(request: &Request<B>) -> Option<String> {
    let authority = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri().authority().map(|authority| authority.as_str()))?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.split(':').next().unwrap_or(authority),
    };
    Some(host.to_ascii_lowercase())
}

/// Forwards `request` to `backend` of `active`, records the outcome, and maps failures to
/// 502 (no connection) or 504 (no answer in time).
pub(super) async fn forward(
    worker: &Worker,
    active: &ActiveRoute,
    (backend, half): (usize, Half),
    client: SocketAddr,
    host: Option<String>,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let config = &worker.proxy.config;
    let trusted = config.trusted_proxies.iter().any(|network| network.contains(&client.ip()));
    let (mut parts, body) = request.into_parts();
    // An upgrade (a WebSocket handshake) keeps its two hop-by-hop headers, and the client's
    // side of the tunnel to be.
    let upgrade = upgrade_protocol(&parts.headers)
        .and_then(|protocol| Some((protocol, parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?)));
    let authority = parts
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| parts.uri.authority().and_then(|authority| HeaderValue::from_str(authority.as_str()).ok()));
    strip_hop_by_hop(&mut parts.headers);
    if let Some((protocol, _)) = &upgrade {
        keep_upgrade(&mut parts.headers, protocol.clone());
    }
    add_forwarding(&mut parts.headers, client, host.as_deref(), trusted);
    if let Some(authority) = authority {
        parts.headers.insert(header::HOST, authority);
    }
    parts.version = http::Version::HTTP_11;
    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));

    let body = match active.take_mirror_turn() {
        Some(shadow) if upgrade.is_none() && mirrorable(&parts.headers, config.max_mirror_body_bytes) => {
            let limit = usize::try_from(config.max_mirror_body_bytes).unwrap_or(usize::MAX);
            let bytes = match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return plain(StatusCode::BAD_REQUEST, "the request body could not be read\n"),
            };
            mirror(worker, active, shadow, &parts, &path, bytes.clone());
            Full::new(bytes).map_err(|never| match never {}).boxed()
        }
        _ => body.boxed(),
    };
    let Some(endpoint) = active.endpoint(backend) else {
        return plain(StatusCode::BAD_GATEWAY, "the backend has no usable endpoint\n");
    };
    parts.uri = Uri::from(path);
    default_host(&mut parts.headers, endpoint);
    let recorder = &active.recorders[backend];
    let started = Instant::now();
    let request = Request::from_parts(parts, body);
    let sent = async {
        match &upgrade {
            Some(_) => worker.upstreams.send_upgrade(endpoint, request).await,
            None => worker.upstreams.send(endpoint, request).await,
        }
    };
    match tokio::time::timeout(config.request_timeout, sent).await {
        Ok(Ok(Sent { mut response, handed })) => {
            // A tunnel counts as one request, ending with its 101.
            recorder.record(half, Outcome::Status(response.status().as_u16()), handed.elapsed());
            let tunnel = match upgrade {
                Some((protocol, client)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    tunnel(client, hyper::upgrade::on(&mut response), endpoint.clone());
                    Some(protocol)
                }
                _ => None,
            };
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(protocol) = tunnel {
                keep_upgrade(&mut parts.headers, protocol);
            }
            Response::from_parts(parts, body.boxed())
        }
        Ok(Err(error)) => {
            recorder.record(half, Outcome::ConnectionError, started.elapsed());
            tracing::debug!(%error, %endpoint, "upstream request failed");
            plain(StatusCode::BAD_GATEWAY, "the backend could not be reached\n")
        }
        Err(_) => {
            recorder.record(half, Outcome::ConnectionError, started.elapsed());
            plain(StatusCode::GATEWAY_TIMEOUT, "the backend did not answer in time\n")
        }
    }
}

/// The protocol an HTTP/1.1 request asks to switch to: `Upgrade`, when `Connection` lists
/// `upgrade`.
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asked = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asked.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Copies bytes both ways between the client and the backend once both connections have
/// switched protocols, until either side closes.
fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade, endpoint: http::uri::Authority) {
    tokio::spawn(async move {
        let (client, backend) = match (client.await, backend.await) {
            (Ok(client), Ok(backend)) => (client, backend),
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(%error, %endpoint, "an upgrade did not complete");
                return;
            }
        };
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(%error, %endpoint, "a tunnel ended with an error");
        }
    });
}

/// Only requests whose whole body is known to be small are copied: the copy must be
/// buffered, and buffering an unbounded stream would hold the real request hostage.
fn mirrorable(headers: &HeaderMap, max_bytes: u64) -> bool {
    match headers.get(header::CONTENT_LENGTH) {
        Some(length) => {
            length.to_str().ok().and_then(|length| length.parse::<u64>().ok()).is_some_and(|n| n <= max_bytes)
        }
        None => !headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// Sends a copy to the shadow backend in the background; its response is discarded and
/// never delays the real one, but it is counted so the shadow can be judged too.
fn mirror(
    worker: &Worker,
    active: &ActiveRoute,
    shadow: usize,
    parts: &http::request::Parts,
    path: &http::uri::PathAndQuery,
    body: Bytes,
) {
    let Some(endpoint) = active.endpoint(shadow).cloned() else { return };
    let mut builder =
        Request::builder().method(parts.method.clone()).uri(Uri::from(path.clone())).version(http::Version::HTTP_11);
    if let Some(headers) = builder.headers_mut() {
        headers.clone_from(&parts.headers);
        default_host(headers, &endpoint);
    }
    let Ok(request) = builder.body(Full::new(body).map_err(|never| match never {}).boxed()) else { return };
    let upstreams = worker.upstreams.clone();
    let timeout = worker.proxy.config.request_timeout;
    let recorder = active.recorders[shadow].clone();
    let half = Half::random();
    tokio::spawn(async move {
        let started = Instant::now();
        match tokio::time::timeout(timeout, upstreams.send(&endpoint, request)).await {
            Ok(Ok(Sent { response, handed })) => {
                // Timed to the response head, as the real requests are.
                recorder.record(half, Outcome::Status(response.status().as_u16()), handed.elapsed());
                // Drain so the pooled connection can be reused; the content is not wanted.
                let _ = response.into_body().collect().await;
            }
            Ok(Err(_)) | Err(_) => recorder.record(half, Outcome::ConnectionError, started.elapsed()),
        }
    });
}

/// HTTP/1.1 requires `Host`: a request that came without one (HTTP/2 without authority)
/// names the endpoint it goes to.
fn default_host(headers: &mut HeaderMap, endpoint: &http::uri::Authority) {
    if !headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(endpoint.as_str())
    {
        headers.insert(header::HOST, host);
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(name);
    }
}

/// Says who the client was: `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded`. What a
/// client says about earlier hops is kept only when the client is a trusted proxy;
/// anyone else's is replaced, since a backend that trusts it could be told any address.
fn add_forwarding(headers: &mut HeaderMap, client: SocketAddr, host: Option<&str>, trusted: bool) {
    if !trusted {
        for name in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &header::FORWARDED] {
            headers.remove(name);
        }
    }
    let chain = |name: &HeaderName, ours: String| match headers.get(name).and_then(|value| value.to_str().ok()) {
        Some(previous) => format!("{previous}, {ours}"),
        None => ours,
    };
    let for_chain = chain(&X_FORWARDED_FOR, client.ip().to_string());
    // RFC 7239: an IPv6 node is quoted and bracketed.
    let node = match client.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("\"[{ip}]\""),
    };
    let mut element = format!("for={node};proto=http");
    if let Some(host) =
        host.filter(|host| host.bytes().all(|byte| byte.is_ascii_alphanumeric() || b".-".contains(&byte)))
    {
        element.push_str(&format!(";host={host}"));
    }
    let forwarded = chain(&header::FORWARDED, element);
    for (name, value) in [(X_FORWARDED_FOR, for_chain), (header::FORWARDED, forwarded)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = host.and_then(|host| HeaderValue::from_str(host).ok())
        && !headers.contains_key(&X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers
            .insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("traceparent"), "trace context passes through");
    }

    fn sent_by_client() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.insert(X_FORWARDED_HOST, HeaderValue::from_static("admin.internal"));
        headers.insert(header::FORWARDED, HeaderValue::from_static("for=203.0.113.7"));
        headers
    }

    #[test]
    fn a_trusted_proxy_extends_the_chain() {
        let mut headers = sent_by_client();
        add_forwarding(&mut headers, "10.0.0.5:5000".parse().expect("addr"), Some("shop.example"), true);
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.7, 10.0.0.5");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "admin.internal");
        assert_eq!(headers[&header::FORWARDED], "for=203.0.113.7, for=10.0.0.5;proto=http;host=shop.example");
    }

    #[test]
    fn anyone_else_is_not_believed() {
        let mut headers = sent_by_client();
        add_forwarding(&mut headers, "[2001:db8::1]:5000".parse().expect("addr"), Some("shop.example"), false);
        assert_eq!(headers[&X_FORWARDED_FOR], "2001:db8::1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(headers[&X_FORWARDED_HOST], "shop.example");
        assert_eq!(headers[&header::FORWARDED], "for=\"[2001:db8::1]\";proto=http;host=shop.example");
    }

    #[test]
    fn hosts_lose_their_port() {
        let request = Request::builder().header(header::HOST, "Shop.Example:8080").body(()).expect("request");
        assert_eq!(request_host(&request).as_deref(), Some("shop.example"));
        let request = Request::builder().header(header::HOST, "[::1]:8080").body(()).expect("request");
        assert_eq!(request_host(&request).as_deref(), Some("::1"));
    }
}
