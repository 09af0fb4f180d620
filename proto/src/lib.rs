//! What the daemon, the CLI and the ingest server must agree on.
//!
//! - [`grpc`]: the daemon's local gRPC API (generated from `proto/uplink.proto`).
//! - [`wire`]: the HTTP wire protocol between daemon and server: paths, header names,
//!   JSON bodies, error codes and limits.
//! - [`integrity`]: the credentials derived from the token file (bearer credential, chunk
//!   secret), chunk digests, the per-session HMAC key and tag.
//! - [`chain`]: chunk digests that chain into the whole file's SHA-256 (one pass on the
//!   server, not two).
//! - [`merkle`]: the RFC 6962 Merkle tree over the chunks, built incrementally.

pub mod chain;
pub mod integrity;
pub mod merkle;
pub mod paths;
pub mod wire;

#[cfg(test)]
mod fuzz;

/// The generated gRPC types and service stubs (`uplink.v1`).
pub mod grpc {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("uplink.v1");

    /// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/uplink_descriptor.bin"));
}

/// Lower-case hex of a byte slice.
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Parses exactly 32 bytes of hex (a SHA-256 or HMAC-SHA256 value).
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}
