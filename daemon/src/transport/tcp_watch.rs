//! Whether a TCP connection is waiting on its peer, from the kernel's own bookkeeping
//! (`TCP_INFO`: data sent and not acknowledged, and how long since the last ACK).
//!
//! An HTTP/2 body can sit whole in h2's and the socket's buffers (megabytes) while the
//! path is dead; what the transport has handed on then says nothing. The kernel knows.
//! The watcher reads a duplicate of the socket, so it never reads a reused descriptor,
//! and lets go when the connection ends.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::progress::LinkWatch;

/// Whether this system lets us ask (Linux's `TCP_INFO`).
pub const SUPPORTED: bool = cfg!(target_os = "linux");

/// How often the watcher looks.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Since when the connection has had data out without an acknowledgement; None when it
/// has nothing out; Err when the kernel cannot say.
#[cfg(target_os = "linux")]
fn waiting_for(fd: &OwnedFd) -> std::io::Result<Option<Duration>> {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is plain old data (integers only), so all-zero is a valid value;
    // getsockopt writes at most `len` bytes into it and we pass its true size.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket we own (a duplicate); the pointers are to live locals
    // of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The last ACK left the peer half a round trip before it reached us: that is when the
    // peer last showed it was receiving, so the silence is counted from there. (On a path
    // cut mid-flight, ACKs already on their way still arrive for half a round trip: the
    // silence began at the cut, not at the last of them.)
    let since_ack = Duration::from_millis(info.tcpi_last_ack_recv.into());
    let half_rtt = Duration::from_micros(u64::from(info.tcpi_min_rtt) / 2);
    Ok((info.tcpi_unacked > 0).then_some(since_ack + half_rtt))
}

/// Other systems: no watch (bodies are judged by what the transport hands on).
#[cfg(not(target_os = "linux"))]
fn waiting_for(_fd: &OwnedFd) -> std::io::Result<Option<Duration>> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Keeps `watch` up to date from `socket` until `ended` is set (or the kernel cannot say).
pub async fn watch(socket: OwnedFd, watch: Arc<LinkWatch>, ended: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !ended.load(Ordering::Relaxed) {
        tick.tick().await;
        match waiting_for(&socket) {
            Ok(since) => watch.set_waiting(since.and_then(|d| Instant::now().checked_sub(d))),
            Err(_) => break,
        }
    }
    watch.set_waiting(None);
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn a_connection_with_nothing_out_is_not_waiting() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("address");
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        client.write_all(b"hello").expect("write");
        std::thread::sleep(Duration::from_millis(50));
        let fd = client.as_fd().try_clone_to_owned().expect("dup");
        // Loopback acknowledges at once: nothing is out.
        assert_eq!(waiting_for(&fd).expect("TCP_INFO"), None);
    }
}
