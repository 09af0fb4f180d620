//! The local gRPC endpoint: a Unix socket only its owner can use.
//!
//! The socket file is created 0600 inside a 0700 directory, and every call is checked
//! against the peer's uid (SO_PEERCRED / getpeereid) — file modes alone can be loosened
//! by mistake. With systemd socket activation the listening socket is inherited. Each
//! connection goes through the [`authority`] front, so stock gRPC clients are understood.

mod authority;

use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

pub use authority::Fronted;

/// Who is on the other end of a local connection, read when it was accepted.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// `None` when the OS would not say.
    pub uid: Option<u32>,
}

impl Connected for Fronted<UnixStream> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        Peer {
            uid: self.get_ref().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// Checks that the caller runs as the daemon's own user.
#[allow(clippy::result_large_err)]
pub fn check_peer(req: Request<()>) -> Result<Request<()>, Status> {
    let me = rustix::process::getuid().as_raw();
    let peer = req.extensions().get::<Peer>().and_then(|p| p.uid);
    match peer {
        Some(uid) if uid == me => Ok(req),
        Some(uid) => Err(crate::grpc::status(
            tonic::Code::PermissionDenied,
            "peer_not_owner",
            &format!("uid {uid} may not use this daemon (it serves uid {me} only)"),
        )),
        None => Err(crate::grpc::status(
            tonic::Code::PermissionDenied,
            "peer_unknown",
            "the caller's credentials could not be read",
        )),
    }
}

/// The listening socket: inherited from systemd (LISTEN_FDS) or bound at `path`.
pub fn listen(path: &Path) -> Result<UnixListener, String> {
    if let Some(l) = inherited()? {
        return Ok(l);
    }
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    if path.exists() {
        // A live daemon answers; a stale file from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another uplinkd is already serving {}",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    // Bind with a tight umask-equivalent: create, then restrict before serving anyone.
    let listener =
        UnixListener::bind(path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    Ok(listener)
}

/// Accepted connections, each behind the `:authority` front.
pub fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<Fronted<UnixStream>>> {
    UnixListenerStream::new(listener).map(|conn| conn.map(Fronted::new))
}

/// systemd socket activation: fd 3 when LISTEN_PID is us and LISTEN_FDS >= 1.
fn inherited() -> Result<Option<UnixListener>, String> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if !pid_ok || fds < 1 {
        return Ok(None);
    }
    // SAFETY: under socket activation systemd hands this process fd 3 (SD_LISTEN_FDS_START),
    // a listening Unix socket, and nothing else in the process owns it.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(3) };
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("inherited socket: {e}"))?;
    UnixListener::from_std(std_listener)
        .map(Some)
        .map_err(|e| format!("inherited socket: {e}"))
}

/// Tells systemd (Type=notify) that the daemon is ready; a no-op elsewhere.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    // Abstract socket names (`@name`) exist on Linux only.
    #[cfg(target_os = "linux")]
    if let Some(name) = path.as_encoded_bytes().strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name) {
            let _ = sock.send_to_addr(b"READY=1", &addr);
        }
        return;
    }
    let _ = sock.send_to(b"READY=1", Path::new(&path));
}
