//! Happy Eyeballs v2 (RFC 8305) for TCP: addresses interleaved by family, IPv6 first,
//! a new attempt every 250 ms while earlier ones are still pending, the first to connect
//! wins. A dead IPv6 route costs 250 ms, not a connect timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::TransportError;

/// RFC 8305's recommended Connection Attempt Delay.
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Orders addresses per RFC 8305 section 4: alternate families, starting with IPv6
/// (the resolver's order is kept within a family).
pub fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs.iter().partition(|a| a.is_ipv6());
    let mut out = Vec::with_capacity(addrs.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// One connection attempt: MPTCP where the kernel could give it a second path (Linux with
/// `net.mptcp.enabled` and a subflow endpoint, see [`super::mptcp::multipath_possible`]),
/// so a host with two networks can use both in one connection and keep it when one dies;
/// it falls back to plain TCP by itself when the server or a middlebox does not speak
/// MPTCP. Elsewhere plain TCP.
async fn open(addr: SocketAddr) -> std::io::Result<TcpStream> {
    #[cfg(target_os = "linux")]
    if super::mptcp::multipath_possible() {
        use socket2::{Domain, Protocol, Socket, Type};
        if let Ok(s) = Socket::new(
            Domain::for_address(addr),
            Type::STREAM,
            Some(Protocol::MPTCP),
        ) {
            s.set_nonblocking(true)?;
            let socket = tokio::net::TcpSocket::from_std_stream(s.into());
            return socket.connect(addr).await;
        }
    }
    TcpStream::connect(addr).await
}

/// Connects to the first address that answers, racing staggered attempts.
pub async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, TransportError> {
    let order = interleave(addrs);
    let mut pending = order.into_iter();
    let mut attempts: JoinSet<(SocketAddr, std::io::Result<TcpStream>)> = JoinSet::new();
    let mut last_err = None;
    let deadline = tokio::time::Instant::now() + timeout;
    let spawn = |set: &mut JoinSet<_>, addr: SocketAddr| {
        set.spawn(async move { (addr, open(addr).await) });
    };
    if let Some(first) = pending.next() {
        spawn(&mut attempts, first);
    }
    loop {
        if attempts.is_empty() {
            match pending.next() {
                Some(next) => spawn(&mut attempts, next),
                None => break,
            }
        }
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok((_, Ok(stream)))) => return Ok(stream),
                Some(Ok((addr, Err(e)))) => {
                    last_err = Some(match e.kind() {
                        std::io::ErrorKind::ConnectionRefused => TransportError::Refused { addr: addr.to_string() },
                        _ => TransportError::Connect { addr: addr.to_string(), message: e.to_string() },
                    });
                }
                Some(Err(_)) | None => {}
            },
            _ = tokio::time::sleep(ATTEMPT_DELAY), if pending.len() > 0 => {
                if let Some(next) = pending.next() {
                    spawn(&mut attempts, next);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(TransportError::Connect { addr: format!("{addrs:?}"), message: "timed out".into() });
            }
        }
    }
    Err(last_err.unwrap_or_else(|| TransportError::Connect {
        addr: format!("{addrs:?}"),
        message: "no address".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn families_alternate_starting_with_ipv6() {
        let got = interleave(&[a("1.1.1.1:1"), a("2.2.2.2:1"), a("[::1]:1"), a("3.3.3.3:1")]);
        assert_eq!(
            got,
            vec![a("[::1]:1"), a("1.1.1.1:1"), a("2.2.2.2:1"), a("3.3.3.3:1")]
        );
        assert_eq!(
            interleave(&[a("[::2]:1"), a("[::3]:1")]),
            vec![a("[::2]:1"), a("[::3]:1")]
        );
    }

    #[tokio::test]
    async fn a_refusing_first_address_falls_through_to_the_next() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        // IPv6 is tried first; nothing listens on that port, so it is refused (or
        // unreachable where ::1 is missing) and the IPv4 address must still win.
        let refused = SocketAddr::new("::1".parse().unwrap(), good.port());
        let s = connect(&[good, refused], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap(), good);
    }

    #[tokio::test]
    async fn all_addresses_failing_reports_the_last_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = connect(&[a(&format!("127.0.0.1:{port}"))], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Refused { .. }), "{err}");
    }
}
