//! Whether a connection really is multipath: it was opened as MPTCP, the server answered
//! in kind (no fallback to TCP), and the kernel's path manager added at least one subflow
//! on another path. Such a connection survives the loss of a path by itself, so the path
//! watcher leaves it alone; any other connection is tied to the path it was opened on.

use std::os::fd::AsFd;

/// Additional subflows of an MPTCP connection that did not fall back; None for plain TCP
/// (or where the kernel cannot say).
#[cfg(target_os = "linux")]
pub fn extra_subflows(socket: &impl AsFd) -> Option<u8> {
    use std::os::fd::AsRawFd;
    // <linux/mptcp.h>: SOL_MPTCP, MPTCP_INFO and struct mptcp_info's leading fields
    // (subflows at byte 0, flags as a u32 at byte 8); FALLBACK is flag bit 0.
    const SOL_MPTCP: libc::c_int = 284;
    const MPTCP_INFO: libc::c_int = 1;
    const FLAG_FALLBACK: u32 = 1;
    let mut info = [0u8; 64];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the descriptor is an open socket borrowed for the call; the pointers are to
    // a live local buffer of the size given, which getsockopt never writes past.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            SOL_MPTCP,
            MPTCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || (len as usize) < 12 {
        return None;
    }
    let flags = u32::from_ne_bytes([info[8], info[9], info[10], info[11]]);
    (flags & FLAG_FALLBACK == 0).then_some(info[0])
}

#[cfg(not(target_os = "linux"))]
pub fn extra_subflows(_socket: &impl AsFd) -> Option<u8> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn plain_tcp_is_not_multipath() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        assert_eq!(extra_subflows(&stream), None);
    }
}
