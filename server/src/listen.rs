//! Binding the listeners: TCP for HTTP/2 and UDP for HTTP/3 on the same port number, so one
//! `Alt-Svc: h3=":PORT"` (and one address a user types) covers both.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// How many fresh TCP ports to try when `--listen` asked for port 0 and the UDP port of
/// the same number turns out to be taken.
const PORT_ATTEMPTS: usize = 8;

/// Wanted UDP socket buffer, each way. At 1 Gbit/s and 60 ms RTT a QUIC connection has
/// ~7.5 MB in flight; the kernel default (~200 KiB) drops bursts long before that, and
/// every drop costs QUIC a congestion-window cut.
pub const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// The bound listeners.
pub struct Listeners {
    pub tcp: tokio::net::TcpListener,
    /// The HTTP/3 socket, non-blocking, ready for `quinn::Endpoint::new`.
    pub udp: Option<UdpBound>,
}

pub struct UdpBound {
    pub socket: std::net::UdpSocket,
    /// What the kernel granted (Linux reports twice the usable payload room).
    pub recv_buffer: usize,
    pub send_buffer: usize,
}

/// Binds TCP on `listen`, then (with `h3`) UDP on the port TCP got. Must run inside a
/// tokio runtime (the TCP listener registers with its reactor).
pub fn bind(listen: SocketAddr, h3: bool) -> Result<Listeners, String> {
    let mut last = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let tcp = bind_tcp(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        if !h3 {
            return Ok(Listeners { tcp, udp: None });
        }
        let addr = tcp
            .local_addr()
            .map_err(|e| format!("cannot read the TCP listener's address: {e}"))?;
        match bind_udp(addr) {
            Ok(udp) => {
                return Ok(Listeners {
                    tcp,
                    udp: Some(udp),
                });
            }
            // Port 0 means "any": give this TCP port back and take another pair.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && listen.port() == 0 => {
                tracing::debug!(%addr, "UDP port of the same number is taken; trying another");
                last = format!("UDP {addr}: {e}");
            }
            Err(e) => {
                return Err(format!(
                    "cannot listen on UDP {addr} for HTTP/3: {e} (--no-h3 serves HTTP/2 only)"
                ));
            }
        }
    }
    Err(format!(
        "no free TCP+UDP port pair after {PORT_ATTEMPTS} attempts; last: {last}"
    ))
}

/// The TCP listener speaks MPTCP where the kernel has it (Linux with `net.mptcp.enabled`):
/// a client with two paths (Wi-Fi and cellular) may then use both in one connection and
/// keep it when one dies. Plain TCP clients are served as before (MPTCP falls back per
/// connection); without MPTCP in the kernel the listener is plain TCP.
fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = tcp_socket(addr)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket.into())
}

fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    #[cfg(target_os = "linux")]
    if let Ok(s) = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(Protocol::MPTCP),
    ) {
        return Ok(s);
    }
    Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpBound> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Sized before bind, so no datagram ever meets the small default buffer.
    let (recv_buffer, send_buffer) = size_buffers(&socket);
    socket.bind(&addr.into())?;
    // tokio (inside quinn) requires a non-blocking socket.
    socket.set_nonblocking(true)?;
    Ok(UdpBound {
        socket: socket.into(),
        recv_buffer,
        send_buffer,
    })
}

/// Asks for [`UDP_BUFFER`] each way. The plain request is capped by
/// `net.core.{r,w}mem_max` (often 208 KiB, 4 MiB here); when that cap bites and the process
/// may exceed it (root or `CAP_NET_ADMIN`), the `*BUFFORCE` variant gets the full size.
/// Returns what the kernel reports; failures only leave a smaller buffer.
fn size_buffers(socket: &Socket) -> (usize, usize) {
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    #[cfg(target_os = "linux")]
    {
        use rustix::net::sockopt;
        // Linux stores (and reports) twice the requested size, the extra half being its
        // bookkeeping allowance; anything less than that means the cap cut the request.
        let full = 2 * UDP_BUFFER;
        if socket.recv_buffer_size().unwrap_or(0) < full {
            let _ = sockopt::set_socket_recv_buffer_size_force(socket, UDP_BUFFER);
        }
        if socket.send_buffer_size().unwrap_or(0) < full {
            let _ = sockopt::set_socket_send_buffer_size_force(socket, UDP_BUFFER);
        }
    }
    (
        socket.recv_buffer_size().unwrap_or(0),
        socket.send_buffer_size().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_zero_gives_tcp_and_udp_the_same_port() {
        let l = bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let tcp = l.tcp.local_addr().unwrap();
        let udp = l.udp.unwrap().socket.local_addr().unwrap();
        assert_ne!(tcp.port(), 0);
        assert_eq!(tcp, udp);
    }

    #[tokio::test]
    async fn a_taken_udp_port_is_an_error_when_the_port_was_chosen() {
        // The TCP port of the same number is usually free; when another test holds it,
        // bind fails on TCP first, and the case is tried again on another port.
        for _ in 0..20 {
            let squatter = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = squatter.local_addr().unwrap();
            let tcp_taken = format!("cannot listen on {addr}");
            match bind(addr, true) {
                Err(e) if e.starts_with(&tcp_taken) => continue,
                Err(e) => assert!(e.contains("--no-h3"), "{e}"),
                Ok(_) => panic!("bound UDP {addr} twice"),
            }
            match bind(addr, false) {
                Err(e) if e.starts_with(&tcp_taken) => continue,
                other => assert!(other.is_ok(), "HTTP/2 alone needs only TCP"),
            }
            return;
        }
        panic!("no port whose TCP number was free in 20 tries");
    }

    #[test]
    fn buffers_are_at_least_what_the_kernel_allows_by_default() {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        let before = s.recv_buffer_size().unwrap();
        let (recv, send) = size_buffers(&s);
        assert!(recv >= before && send > 0, "{before} -> {recv}/{send}");
    }
}
