//! `uplinkd`: uplink's background upload daemon, as a library (the binary is a thin
//! `main`), so tests and tools can reuse its parts.

pub mod config;
pub mod engine;
pub mod events;
pub mod grpc;
pub mod heap;
pub mod ipc;
pub mod jobs;
pub mod manager;
pub mod memory;
pub mod seal;
pub mod server_api;
pub mod telemetry;
pub mod transport;
pub mod validate;

#[cfg(test)]
mod fuzz;
