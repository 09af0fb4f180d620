//! Where the daemon's socket is, by default — the CLI and the daemon must agree.

use std::path::{Path, PathBuf};

/// Environment variable naming the daemon's socket.
pub const SOCKET_ENV: &str = "UPLINK_SOCKET";

/// The platform's per-user directories for uplink.
pub fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("dev", "uplink", "uplink")
}

/// `~/.local/share/uplink` on Linux, `~/Library/Application Support/dev.uplink.uplink` on macOS.
pub fn default_state_dir() -> PathBuf {
    project_dirs()
        .map(|d| d.data_local_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".uplink"))
}

/// `$XDG_RUNTIME_DIR/uplink/uplinkd.sock` where the platform has a runtime dir, else
/// `uplinkd.sock` in the state dir.
pub fn default_socket_in(state_dir: &Path) -> PathBuf {
    project_dirs()
        .and_then(|d| d.runtime_dir().map(|r| r.join("uplinkd.sock")))
        .unwrap_or_else(|| state_dir.join("uplinkd.sock"))
}

/// The socket a client should use: `$UPLINK_SOCKET`, else the default.
pub fn client_socket() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| default_socket_in(&default_state_dir()))
}
