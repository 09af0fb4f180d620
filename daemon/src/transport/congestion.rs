//! Which congestion control our TCP connections use, and why.
//!
//! CUBIC (the stock Linux default) reads every random loss as congestion: at 1 % loss and
//! 50 ms it holds a few Mbit/s whatever the link. BBR paces to the measured bottleneck and
//! shrugs random loss off, as QUIC's BBR does on the HTTP/3 path. So each HTTP/2
//! connection asks for BBR once it is connected (after connect, because a route's
//! `congctl` is applied at connect and would otherwise replace the choice). Where the
//! host does not allow it, Status says why and what to set.

use std::os::fd::AsFd;

/// What one connection ended up with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    /// The algorithm the kernel reports for the socket ("bbr", "cubic", …); empty when
    /// the platform does not tell.
    pub algorithm: String,
    /// Why it is not BBR, and what to set; empty when it is.
    pub note: String,
}

/// The algorithm we ask for.
pub const WANTED: &str = "bbr";

/// Asks for BBR on a connected TCP socket and reports what the socket uses.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn prefer_bbr(sock: impl AsFd) -> Choice {
    use rustix::io::Errno;
    use rustix::net::sockopt;
    let note = match sockopt::set_tcp_congestion(&sock, WANTED) {
        Ok(()) => String::new(),
        Err(Errno::PERM) => format!(
            "{WANTED} is not allowed for unprivileged sockets: add it to \
             net.ipv4.tcp_allowed_congestion_control (or run the daemon with CAP_NET_ADMIN), \
             or the route pins its congctl with `lock`"
        ),
        Err(Errno::NOENT) => {
            format!("the kernel has no {WANTED}: load it with `modprobe tcp_{WANTED}`")
        }
        Err(e) => format!("setting TCP_CONGESTION={WANTED} failed: {e}"),
    };
    let algorithm = sockopt::tcp_congestion(&sock).unwrap_or_default();
    Choice { algorithm, note }
}

/// macOS gives a socket no say in its congestion control: the system's stays.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn prefer_bbr(_sock: impl AsFd) -> Choice {
    Choice {
        algorithm: String::new(),
        note: "this platform does not let a socket choose its congestion control; \
               the system's default applies"
            .into(),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_connected_socket_gets_bbr_or_says_why_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let choice = prefer_bbr(&sock);
        assert!(!choice.algorithm.is_empty(), "{choice:?}");
        assert_eq!(
            choice.algorithm == WANTED,
            choice.note.is_empty(),
            "{choice:?}"
        );
        let available =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
                .unwrap_or_default();
        if available.split_whitespace().any(|a| a == WANTED) && rustix::process::geteuid().is_root()
        {
            assert_eq!(choice.algorithm, WANTED, "root may choose any loaded one");
        }
    }
}
