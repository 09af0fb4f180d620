//! Noticing that the host changed networks — Wi-Fi lost, cellular took over — so HTTP/2
//! leaves the old path at once instead of waiting for its TCP connections to time out.
//!
//! A TCP connection is bound to the address it was opened from. When the route to the
//! server now leaves from another address, that connection is on a path the host no
//! longer uses: it is dropped, and its requests go again on a fresh connection, which
//! the kernel opens on the new path. (QUIC needs none of this: it migrates.) The routes
//! are checked whenever the kernel reports an address, link or route change (netlink on
//! Linux), and every second everywhere as the portable fallback. A check costs a UDP
//! socket `connect`, which sends nothing: the kernel only picks the route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Weak;
use std::time::Duration;

use super::Transport;

/// How often the routes are checked without a change notification.
pub const POLL: Duration = Duration::from_secs(1);
/// A connection in use when the routes are checked is looked at again this soon, up to
/// this many times (then at the next poll).
const BUSY_RETRY: Duration = Duration::from_millis(20);
const BUSY_RETRIES: usize = 10;

/// The address the host would send from towards `peer` now (None: no route at all).
pub fn source_towards(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(peer).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Checks the paths on every change and every [`POLL`], until the transport is dropped.
pub async fn run(transport: Weak<Transport>) {
    let mut changes = RouteChanges::subscribe();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = changes.next() => {}
        }
        let Some(t) = transport.upgrade() else {
            return;
        };
        let (mut left, mut busy) = t.leave_dead_paths();
        // Connections in use were skipped, not waited for: look again shortly (bounded).
        for _ in 0..BUSY_RETRIES {
            if busy == 0 {
                break;
            }
            tokio::time::sleep(BUSY_RETRY).await;
            let (l, b) = t.leave_dead_paths();
            (left, busy) = (left + l, b);
        }
        if left > 0 {
            tracing::info!(
                connections = left,
                "network path changed: new requests use the new path"
            );
        }
    }
}

/// The kernel's notifications of address, link and route changes (Linux: netlink, read
/// by a thread of its own: a blocking read needs no unsafe registration with tokio).
struct RouteChanges {
    changed: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl RouteChanges {
    #[cfg(target_os = "linux")]
    fn subscribe() -> RouteChanges {
        use rustix::net::netlink::SocketAddrNetlink;
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        // RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR |
        // RTMGRP_IPV6_ROUTE (rtnetlink.h).
        const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;
        let socket = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None,
        )
        .and_then(|fd| rustix::net::bind(&fd, &SocketAddrNetlink::new(0, GROUPS)).map(|()| fd));
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(error = %e, "no netlink route notifications; checking paths every second");
                return RouteChanges { changed: None };
            }
        };
        let changed = std::sync::Arc::new(tokio::sync::Notify::new());
        let notify = std::sync::Arc::downgrade(&changed);
        let spawned = std::thread::Builder::new()
            .name("uplinkd-netlink".into())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                // The messages are not parsed: any change means "check the routes". An
                // overrun (ENOBUFS: changes were lost) means the same.
                loop {
                    let read = rustix::io::read(&socket, &mut buf);
                    let Some(n) = notify.upgrade() else { return };
                    match read {
                        Ok(_) | Err(rustix::io::Errno::NOBUFS) | Err(rustix::io::Errno::INTR) => {
                            n.notify_one()
                        }
                        Err(e) => {
                            tracing::info!(error = %e, "netlink route notifications ended");
                            return;
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => RouteChanges {
                changed: Some(changed),
            },
            Err(e) => {
                tracing::info!(error = %e, "no netlink thread; checking paths every second");
                RouteChanges { changed: None }
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn subscribe() -> RouteChanges {
        RouteChanges { changed: None }
    }

    /// The next change.
    async fn next(&mut self) {
        match &self.changed {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_to_loopback_leaves_from_loopback() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(
            source_towards(peer),
            Some(IpAddr::from(Ipv4Addr::LOCALHOST))
        );
    }
}
