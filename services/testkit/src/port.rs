//! Free loopback ports.

use std::net::{Ipv4Addr, TcpListener};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks the port, so parallel tests do not collide the way hard-coded ports
/// do. The port is released before returning, so another process may grab it in between;
/// callers that start a server should treat a failure to bind as "pick another port".
///
/// # Panics
///
/// Panics when no port can be bound at all, which means the machine has no loopback.
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|err| panic!("cannot bind a loopback port: {err}"));
    listener.local_addr().unwrap_or_else(|err| panic!("cannot read the bound address: {err}")).port()
}
