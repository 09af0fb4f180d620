//! `PUT /v1/objects/{name}`: a whole file in one request (small files, `curl -T`).
//!
//! The body streams to a hidden temp file on a blocking thread that hashes as it writes;
//! only a complete body whose SHA-256 matches the optional `X-Content-SHA256` is renamed
//! into place, so a failed upload never leaves a partial object.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::BodyExt;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uplink_proto::wire::{self, UploadCompleted, code};

use crate::error::ApiError;
use crate::fsutil;

/// Frames queued between the network and the writer thread.
const QUEUE_FRAMES: usize = 64;

pub async fn put_object<B>(
    objects_dir: &Path,
    name: &str,
    expect: Option<[u8; 32]>,
    mut body: B,
) -> Result<UploadCompleted, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut raw = [0u8; 8];
    rand::rng().fill_bytes(&mut raw);
    let tmp = objects_dir.join(format!(".upload-{}", hex::encode(raw)));
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE_FRAMES);
    let tmp2 = tmp.clone();
    let writer = tokio::task::spawn_blocking(move || write_and_hash(&tmp2, rx));

    let mut size = 0u64;
    let mut failure = None;
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Err(e) => {
                failure = Some(ApiError::new(
                    400,
                    code::BAD_REQUEST,
                    format!("request body interrupted: {e}"),
                ));
                break;
            }
        };
        size += data.len() as u64;
        if size > wire::MAX_OBJECT_SIZE {
            failure = Some(ApiError::new(
                413,
                code::CHUNK_TOO_LARGE,
                format!(
                    "objects are limited to {} bytes; use an upload session",
                    wire::MAX_OBJECT_SIZE
                ),
            ));
            break;
        }
        if tx.send(data).await.is_err() {
            break; // the writer failed; its error is reported below
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| ApiError::new(500, code::INTERNAL, format!("writer failed: {e}")))
        .and_then(|r| r.map_err(|e| ApiError::io("writing the object", &e)));
    let result = match (failure, written) {
        (Some(e), _) | (None, Err(e)) => Err(e),
        (None, Ok((sha, n))) => {
            if expect.is_some_and(|want| want != sha) {
                Err(ApiError::new(
                    422,
                    code::SHA256_MISMATCH,
                    "body does not match X-Content-SHA256",
                ))
            } else {
                let dest = objects_dir.join(name);
                let (tmp2, dest2) = (tmp.clone(), dest.clone());
                tokio::task::spawn_blocking(move || fsutil::rename_durable(&tmp2, &dest2))
                    .await
                    .map_err(|e| ApiError::new(500, code::INTERNAL, e.to_string()))?
                    .map_err(|e| ApiError::io("moving the object into place", &e))?;
                Ok(UploadCompleted {
                    sha256: hex::encode(sha),
                    size: n,
                    location: wire::object_path(name),
                })
            }
        }
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_and_hash(
    path: &PathBuf,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<([u8; 32], u64)> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(data) = rx.blocking_recv() {
        h.update(&data);
        f.write_all(&data)?;
        n += data.len() as u64;
    }
    f.sync_all()?;
    Ok((h.finalize().into(), n))
}
