//! Where the foreign clients (Python grpcio and aioquic, Node grpc-js) and the proto
//! files they need are found.

use std::path::{Path, PathBuf};

/// Where `scripts/test` installs the foreign clients (`.deps/` at the workspace root).
pub fn deps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps")
}

/// The Python with the foreign clients (aioquic, grpcio): `UPLINK_PYTHON`, else the venv
/// `scripts/test` made. A missing one fails the test — never a skip.
pub fn interop_python() -> PathBuf {
    if let Some(p) = std::env::var_os("UPLINK_PYTHON") {
        return PathBuf::from(p);
    }
    let p = deps_dir().join("venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run `scripts/test` (the README's test command), which installs \
         the Python clients the tests use, or set UPLINK_PYTHON",
        p.display()
    );
    p
}

/// `node_modules` with @grpc/grpc-js, installed by `scripts/test`.
pub fn interop_node_modules() -> PathBuf {
    let p = deps_dir().join("node/node_modules");
    assert!(
        p.join("@grpc/grpc-js").is_dir(),
        "{} lacks @grpc/grpc-js: run `scripts/test` (the README's test command)",
        p.display()
    );
    p
}

/// A file of the interop folder (foreign-client scripts).
pub fn interop_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name)
}

/// The `proto/` folder a foreign client generates its code from.
pub fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/proto")
}
