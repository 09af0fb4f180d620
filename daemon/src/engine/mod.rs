//! The upload engine's I/O side. Every decision lives in the deterministic core
//! (`uplink-engine`, no I/O, tested in virtual time); [`drive`] runs it with the file and
//! the network, with [`calls`] for the composite server calls it makes. Here too: the mmap [`reader`], the Merkle [`ledger`] with its checkpoint,
//! and [`resume`], where a restarted job reconciles its checkpoint with the server;
//! `rescan` compares a live job's chunks with its finished file before completing.

pub mod buffer;
mod calls;
pub mod chain;
pub mod compress;
pub mod drive;
pub mod ledger;
pub mod reader;
pub mod rescan;
pub mod resume;
