//! Test harness: starts the real `uplink-server`, `uplinkd` and `uplink` binaries (built by
//! `cargo build --workspace` into the same target dir) on loopback, in a temp dir per test.
//! Every process is killed when its guard drops, also when a test fails.

mod cgroup;
mod cli;
mod files;
mod interop;
mod process;
mod s3;

pub use cgroup::*;
pub use cli::*;
pub use files::*;
pub use interop::*;
pub use process::*;
pub use s3::*;
