//! Free loopback ports for servers the tests start as separate processes.
//!
//! A port picked by binding port 0 comes from the kernel's ephemeral range, the same range
//! it takes the local port of every outgoing connection from. Between picking such a port
//! and the server binding it, any test's client connection may take it, and the server
//! then fails with "address already in use". So ports here come from below the ephemeral
//! range, where only another listener can be, and this process never hands one out twice.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use rand::Rng;

/// Where Linux's ephemeral range starts when `/proc` does not say.
const DEFAULT_EPHEMERAL_START: u16 = 32768;

/// The lowest port handed out: above the well-known and commonly configured ports.
const LOWEST_PORT: u16 = 10000;

/// Random picks tried before falling back to a kernel-chosen port.
const PICKS: usize = 200;

/// Ports this process has handed out; a port is never handed out twice, even after its
/// server stopped, because a test may start a server again on the same port.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that no outgoing
/// connection will take.
///
/// The port is released before returning, so another process's server may still bind it
/// in between; callers that start a server retry with another port when it cannot bind.
///
/// # Panics
///
/// Panics when no port can be bound at all, which means the machine has no loopback.
pub fn free_port() -> u16 {
    let range = listening_range();
    let mut rng = rand::rng();
    for _ in 0..PICKS {
        let port = rng.random_range(range.clone());
        if bindable(port) && hand_out(port) {
            return port;
        }
    }
    // Every pick was taken: a kernel-chosen port is still better than none.
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|err| panic!("cannot bind a loopback port: {err}"));
    listener.local_addr().unwrap_or_else(|err| panic!("cannot read the bound address: {err}")).port()
}

/// The ports below the kernel's ephemeral range.
fn listening_range() -> Range<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START);
    // A machine whose ephemeral range starts low leaves nothing below it; then any
    // unprivileged port is as good as another.
    if ephemeral_start > LOWEST_PORT + 1000 { LOWEST_PORT..ephemeral_start } else { 1024..u16::MAX }
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Records `port` as handed out; false when it was already.
fn hand_out(port: u16) -> bool {
    HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner).insert(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let range = listening_range();
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        assert!(ports.iter().all(|port| range.contains(port)), "{range:?}: {ports:?}");
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
    }

    #[test]
    fn a_port_with_a_listener_is_not_bindable() {
        let port = free_port();
        let _listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
        assert!(!bindable(port));
    }
}
