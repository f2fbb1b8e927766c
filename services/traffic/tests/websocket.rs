//! WebSocket through the proxy: a real client and a real echo server, messages both ways,
//! the close handshake, and the tunnel counted as one request of its backend.

mod support;

use std::net::SocketAddr;

use ficus_proto::traffic::v1 as proto;
use futures::{SinkExt, StreamExt};
use support::Traffic;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that greets each client, then echoes what it is sent until the
/// client closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
                if socket.send(Message::text("hello from the backend")).await.is_err() {
                    return;
                }
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_close() {
                        break;
                    }
                    if socket.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_websocket_passes_through_both_ways_and_counts_once() {
    let backend = echo_server().await;
    let mut traffic = Traffic::start().await;
    let route =
        ficus_testkit::route::two_backends("ws", ("stable", &backend.to_string()), ("canary", "127.0.0.1:9"), 0);
    traffic.put(route).await;

    let stream = tokio::net::TcpStream::connect(traffic.proxy).await.expect("connect");
    let (mut socket, response) =
        tokio_tungstenite::client_async(format!("ws://{}/chat", traffic.proxy), stream).await.expect("handshake");
    assert_eq!(response.status(), 101);
    let greeting = socket.next().await.expect("a message").expect("readable");
    assert_eq!(greeting, Message::text("hello from the backend"), "backend to client");
    for text in ["one", "two", "three"] {
        socket.send(Message::text(text)).await.expect("send");
        let echoed = socket.next().await.expect("a message").expect("readable");
        assert_eq!(echoed, Message::text(text), "client to backend and back");
    }
    socket.close(None).await.expect("close");
    while let Some(message) = socket.next().await {
        if message.is_err() {
            break;
        }
    }

    let stats = traffic
        .api
        .get_traffic_stats(proto::GetTrafficStatsRequest { route: "ws".into(), ..Default::default() })
        .await
        .expect("stats")
        .into_inner();
    let stable = stats.backends.iter().find(|backend| backend.backend == "stable").expect("stable");
    assert_eq!(stable.requests, 1, "the tunnel is one request");
    assert_eq!(stable.responses_by_class.get("1xx"), Some(&1));
    traffic.stop().await;
}
