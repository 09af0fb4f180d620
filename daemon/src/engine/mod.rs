//! The upload engine. Decisions are plain code (`plan`, `resume`, `ledger`, `retry`,
//! `meter`), unit-tested without I/O; `upload` drives them with the file and the network.

pub mod ledger;
pub mod meter;
pub mod plan;
pub mod reader;
pub mod resume;
pub mod retry;
pub mod upload;
