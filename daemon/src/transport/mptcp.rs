//! MPTCP on Linux: whether to open a connection as MPTCP at all, and whether one really
//! became multipath.
//!
//! A connection is opened as MPTCP only when the kernel's path manager could give it a
//! second path ([`multipath_possible`]). Otherwise it would stay on one subflow and pay
//! MPTCP's extra layer for nothing: on HTTP/2 that was about a sixth of the daemon's CPU
//! (1.62-1.71 s/GiB against 1.35-1.44 s/GiB as plain TCP, loopback, 2 GiB, measured).
//!
//! A connection is multipath when it was opened as MPTCP, the server answered in kind (no
//! fallback to TCP), and the path manager added at least one subflow on another path.
//! Such a connection survives the loss of a path by itself, so the path watcher leaves it
//! alone; any other connection is tied to the path it was opened on.

use std::os::fd::AsFd;

/// Whether a new MPTCP connection could run over more than one path: the path manager
/// allows extra subflows and either has a local endpoint to open them from (`ip mptcp
/// endpoint add ADDR dev IF subflow`, or `fullmesh`; NetworkManager adds one per connected
/// network) or accepts addresses the server announces. Asked before every connect (a
/// netlink round trip of a few microseconds), so a network that joins later counts.
#[cfg(target_os = "linux")]
pub fn multipath_possible() -> bool {
    path_manager::query().is_ok_and(|pm| pm.multipath_possible())
}

#[cfg(not(target_os = "linux"))]
pub fn multipath_possible() -> bool {
    false
}

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

/// The in-kernel MPTCP path manager's endpoints and limits, read over generic netlink
/// (family `mptcp_pm`, <linux/mptcp_pm.h>).
#[cfg(target_os = "linux")]
mod path_manager {
    use std::time::Duration;

    use rustix::fd::OwnedFd;
    use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink};

    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const HEADER: usize = 16; // struct nlmsghdr
    const GENL_HEADER: usize = 4; // struct genlmsghdr
    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    const PM_CMD_GET_ADDR: u8 = 3;
    const PM_CMD_GET_LIMITS: u8 = 6;
    const PM_ATTR_ADDR: u16 = 1;
    const PM_ATTR_RCV_ADD_ADDRS: u16 = 2;
    const PM_ATTR_SUBFLOWS: u16 = 3;
    const ADDR_ATTR_FLAGS: u16 = 6;
    const FLAG_SUBFLOW: u32 = 1 << 1;
    const FLAG_FULLMESH: u32 = 1 << 3;
    /// Reads per question: a dump of a few endpoints fits in one; this only bounds a
    /// kernel that keeps talking.
    const MAX_READS: usize = 64;

    #[derive(Debug, Default, PartialEq)]
    pub struct PathManager {
        /// Extra subflows a connection may have (`ip mptcp limits … subflows N`).
        pub subflows: u32,
        /// Addresses announced by the peer that may be used (`add_addr_accepted`).
        pub accepted_announcements: u32,
        /// Local endpoints flagged `subflow` or `fullmesh`.
        pub subflow_endpoints: usize,
    }

    impl PathManager {
        pub fn multipath_possible(&self) -> bool {
            self.subflows > 0 && (self.subflow_endpoints > 0 || self.accepted_announcements > 0)
        }
    }

    pub fn query() -> std::io::Result<PathManager> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(netlink::GENERIC),
        )?;
        let wait = Some(Duration::from_millis(200));
        rustix::net::sockopt::set_socket_timeout(&fd, rustix::net::sockopt::Timeout::Recv, wait)?;
        let family = family_id(&fd)?;
        let mut pm = PathManager::default();
        for msg in exchange(&fd, &request(family, 0, PM_CMD_GET_LIMITS, 2, &[]))? {
            for (kind, value) in attributes(msg.get(GENL_HEADER..).unwrap_or_default()) {
                match kind {
                    PM_ATTR_RCV_ADD_ADDRS => pm.accepted_announcements = u32_of(value),
                    PM_ATTR_SUBFLOWS => pm.subflows = u32_of(value),
                    _ => {}
                }
            }
        }
        for msg in exchange(&fd, &request(family, NLM_F_DUMP, PM_CMD_GET_ADDR, 3, &[]))? {
            pm.subflow_endpoints += endpoint_flags(&msg)
                .filter(|f| f & (FLAG_SUBFLOW | FLAG_FULLMESH) != 0)
                .count();
        }
        Ok(pm)
    }

    /// The flags of the endpoint one GET_ADDR answer describes.
    fn endpoint_flags(msg: &[u8]) -> impl Iterator<Item = u32> + '_ {
        attributes(msg.get(GENL_HEADER..).unwrap_or_default())
            .filter(|(kind, _)| *kind == PM_ATTR_ADDR)
            .flat_map(|(_, nested)| attributes(nested))
            .filter(|(kind, _)| *kind == ADDR_ATTR_FLAGS)
            .map(|(_, value)| u32_of(value))
    }

    /// The number the kernel gave the `mptcp_pm` family (absent: no MPTCP here).
    fn family_id(fd: &OwnedFd) -> std::io::Result<u16> {
        let ask = request(
            GENL_ID_CTRL,
            0,
            CTRL_CMD_GETFAMILY,
            1,
            &[(CTRL_ATTR_FAMILY_NAME, b"mptcp_pm\0")],
        );
        exchange(fd, &ask)?
            .iter()
            .flat_map(|msg| attributes(msg.get(GENL_HEADER..).unwrap_or_default()))
            .find(|(kind, _)| *kind == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, v)| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)))
            .ok_or_else(|| std::io::Error::other("no mptcp_pm netlink family"))
    }

    /// One generic netlink request: header, command, attributes (each padded to 4 bytes).
    pub(super) fn request(
        family: u16,
        flags: u16,
        cmd: u8,
        seq: u32,
        attrs: &[(u16, &[u8])],
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(&[0; 4]); // length, filled in below
        m.extend_from_slice(&family.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills it in
        m.extend_from_slice(&[cmd, 1, 0, 0]); // command, version 1
        for (kind, value) in attrs {
            let len = 4 + value.len();
            m.extend_from_slice(&(len as u16).to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(value);
            m.resize(m.len().next_multiple_of(4), 0);
        }
        let total = (m.len() as u32).to_ne_bytes();
        m[..4].copy_from_slice(&total);
        m
    }

    /// Sends `msg` to the kernel and collects the payloads of its answers (up to the end
    /// of a dump, or the one answer to a plain request). An error answer is an error.
    fn exchange(fd: &OwnedFd, msg: &[u8]) -> std::io::Result<Vec<Vec<u8>>> {
        rustix::io::write(fd, msg)?;
        let dump = msg
            .get(6..8)
            .is_some_and(|f| u16::from_ne_bytes([f[0], f[1]]) & NLM_F_DUMP != 0);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        for _ in 0..MAX_READS {
            let n = rustix::io::read(fd, &mut buf)?;
            for (kind, payload) in messages(buf.get(..n).unwrap_or_default()) {
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = payload
                            .get(..4)
                            .map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
                        return Err(std::io::Error::from_raw_os_error(-errno));
                    }
                    _ => out.push(payload.to_vec()),
                }
            }
            if !dump && !out.is_empty() {
                return Ok(out);
            }
        }
        Err(std::io::Error::other("netlink answer did not end"))
    }

    /// (type, payload) of each netlink message in one read.
    fn messages(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
        std::iter::from_fn(move || {
            let len = u32::from_ne_bytes(b.get(..4)?.try_into().ok()?) as usize;
            let kind = u16::from_ne_bytes(b.get(4..6)?.try_into().ok()?);
            let payload = b.get(HEADER..len)?;
            b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
            Some((kind, payload))
        })
    }

    /// (type, value) of each attribute in `b` (the nested flag masked off).
    pub(super) fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
        std::iter::from_fn(move || {
            let len = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?) as usize;
            let kind = u16::from_ne_bytes(b.get(2..4)?.try_into().ok()?) & 0x3fff;
            let value = b.get(4..len)?;
            b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
            Some((kind, value))
        })
    }

    fn u32_of(v: &[u8]) -> u32 {
        v.get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes)
    }
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

    #[test]
    fn attributes_are_read_as_the_kernel_lays_them_out() {
        // An endpoint answer: genl header, then ADDR { ID = 1, FLAGS = subflow }.
        let msg = path_manager::request(
            0,
            0,
            0,
            0,
            &[(1, &[8, 0, 2, 0, 1, 0, 0, 0, 8, 0, 6, 0, 2, 0, 0, 0])],
        );
        let attrs: Vec<_> = path_manager::attributes(&msg[20..]).collect();
        assert_eq!(attrs.len(), 1);
        let nested: Vec<_> = path_manager::attributes(attrs[0].1).collect();
        assert_eq!(
            nested,
            vec![(2, &[1u8, 0, 0, 0][..]), (6, &[2u8, 0, 0, 0][..])]
        );
        // A truncated attribute ends the walk instead of reading past the message.
        assert_eq!(path_manager::attributes(&[200, 0, 1, 0, 0]).count(), 0);
    }

    #[test]
    fn the_kernel_path_manager_answers_where_mptcp_is_enabled() {
        let enabled =
            std::fs::read_to_string("/proc/sys/net/mptcp/enabled").is_ok_and(|v| v.trim() == "1");
        let pm = path_manager::query();
        if enabled {
            let pm = pm.expect("an MPTCP kernel answers the path manager query");
            // Without subflow endpoints and announcements, one path only: plain TCP.
            if pm.subflow_endpoints == 0 && pm.accepted_announcements == 0 {
                assert!(!pm.multipath_possible());
            }
        }
    }
}
