//! What the proxy tells a backend about a request: who sent it, believed only from a
//! trusted proxy; never the proxy's own credentials; and a request whose framing is
//! ambiguous cannot smuggle a second one past it.

mod support;

use ficus_testkit::Backend;
use support::{Traffic, route};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const SPOOFED: [(&str, &str); 5] = [
    ("x-forwarded-for", "203.0.113.7"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "admin.internal"),
    ("forwarded", "for=203.0.113.7;proto=https"),
    ("proxy-authorization", "Basic c2VjcmV0"),
];

async fn forwarded(trusted: bool) -> http::HeaderMap {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let data = tempfile::tempdir().expect("temp dir");
    let mut traffic = Traffic::start_configured(data, |config| {
        if trusted {
            config.proxy.trusted_proxies = vec!["127.0.0.0/8".parse().expect("network")];
        }
    })
    .await;
    traffic.put(route("web", stable.addr(), canary.addr(), 0)).await;
    assert_eq!(traffic.get("/", &SPOOFED).await.status, 200);
    let headers = stable.last_headers().expect("the backend saw the request");
    traffic.stop().await;
    headers
}

#[tokio::test]
async fn an_untrusted_client_cannot_say_who_it_is_and_a_trusted_proxy_can() {
    let untrusted = forwarded(false).await;
    assert_eq!(untrusted["x-forwarded-for"], "127.0.0.1");
    assert_eq!(untrusted["x-forwarded-proto"], "http");
    assert_ne!(untrusted["x-forwarded-host"], "admin.internal");
    assert_eq!(untrusted["forwarded"].to_str().expect("ascii").split(';').next(), Some("for=127.0.0.1"));
    assert!(!untrusted.contains_key("proxy-authorization"), "the proxy's credentials stay with the proxy");

    let trusted = forwarded(true).await;
    assert_eq!(trusted["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(trusted["x-forwarded-proto"], "https");
    assert_eq!(trusted["x-forwarded-host"], "admin.internal");
    assert!(trusted["forwarded"].to_str().expect("ascii").starts_with("for=203.0.113.7;proto=https, for=127.0.0.1"));
    assert!(!trusted.contains_key("proxy-authorization"));
}

/// RFC 9112 §6.1: a request with both Content-Length and Transfer-Encoding is read by
/// Transfer-Encoding alone, and the connection is closed after the response, so bytes
/// the Content-Length would have left for a "next request" are never one.
#[tokio::test]
async fn a_request_with_both_content_length_and_transfer_encoding_smuggles_nothing() {
    let (stable, canary) = (Backend::start("stable").await, Backend::start("canary").await);
    let mut traffic = Traffic::start().await;
    traffic.put(route("web", stable.addr(), canary.addr(), 0)).await;
    let mut stream = TcpStream::connect(traffic.proxy).await.expect("connect");
    let smuggling = "POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
                     0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: shop\r\n\r\n";
    stream.write_all(smuggling.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("the proxy answers and closes");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one response, then the connection closed: {answer}");
    assert_eq!(stable.hits(), 1, "the smuggled request never reached the backend");
    let headers = stable.last_headers().expect("headers");
    assert!(!headers.contains_key("content-length"), "the backend saw one framing: {headers:?}");
    traffic.stop().await;
}
