//! `PUT /v1/objects/{name}`: a whole file in one request (small files, `curl -T`).
//!
//! The body streams to a hidden temp file on a blocking thread that hashes as it writes;
//! only a complete body whose SHA-256 matches the optional `X-Content-SHA256` is moved
//! into place, so a failed upload never leaves a partial object. An existing object is
//! replaced only with `X-Overwrite: 1`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uplink_proto::wire::{self, UploadCompleted, code};

use crate::api::{App, ResponseBody, blocking, drain, header_str, json};
use crate::error::ApiError;
use crate::fsutil;

/// Frames queued between the network and the writer thread.
const QUEUE_FRAMES: usize = 64;

/// `PUT /v1/objects/{name}` by `tenant`. A refusal known from the headers (bad name,
/// existing object, quota) is answered after reading a little of the body, so a client
/// still sending sees the answer rather than a reset stream.
pub async fn put<B>(
    app: &Arc<App>,
    tenant: &str,
    name: &str,
    req: Request<B>,
) -> Result<Response<ResponseBody>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (head, mut body) = req.into_parts();
    let put = match admit(app, tenant, name, &head.headers).await {
        Ok(put) => put,
        Err(e) => {
            drain(&mut body).await;
            return Err(e);
        }
    };
    let (done, replaced) = put_object(&put, body).await?;
    app.store.note_stored(tenant, done.size, replaced);
    Ok(json(StatusCode::CREATED, &done))
}

/// One admitted object PUT.
struct PutObject {
    /// The tenant's objects dir.
    dir: PathBuf,
    name: String,
    /// `X-Content-SHA256`, if sent.
    expect: Option<[u8; 32]>,
    overwrite: bool,
}

/// Checks the headers, then (on a blocking thread: it touches the disk) the name, the
/// quota and the tenant's directory.
async fn admit(
    app: &Arc<App>,
    tenant: &str,
    name: &str,
    h: &HeaderMap,
) -> Result<PutObject, ApiError> {
    if !wire::is_valid_object_name(name) {
        return Err(ApiError::new(
            400,
            code::BAD_NAME,
            format!("invalid object name {name:?}"),
        ));
    }
    let expect = match header_str(h, wire::HDR_CONTENT_SHA256)? {
        Some(v) => Some(
            uplink_proto::parse_hex32(v)
                .ok_or_else(|| ApiError::bad_header("X-Content-SHA256 must be 64 hex digits"))?,
        ),
        None => None,
    };
    let overwrite = header_str(h, wire::HDR_OVERWRITE)? == Some("1");
    // A body without Content-Length counts as empty here: the quota is checked at
    // admission, not by cutting a body off midway.
    let declared = header_str(h, http::header::CONTENT_LENGTH.as_str())?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let (app, tenant, name) = (Arc::clone(app), tenant.to_string(), name.to_string());
    blocking(move || {
        let dir = app.store.objects_dir(&tenant);
        if !overwrite && dir.join(&name).exists() {
            return Err(taken(&name));
        }
        app.store.check_quota(&tenant, declared, false)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::io("making the tenant's objects dir", &e))?;
        Ok(PutObject {
            dir,
            name,
            expect,
            overwrite,
        })
    })
    .await
}

fn taken(name: &str) -> ApiError {
    ApiError::new(
        409,
        code::OBJECT_EXISTS,
        format!("an object named {name:?} exists; send X-Overwrite: 1 to replace it"),
    )
}

/// Receives the body and places the object; returns it and the size it replaced.
async fn put_object<B>(put: &PutObject, mut body: B) -> Result<(UploadCompleted, u64), ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (objects_dir, name, expect) = (&put.dir, put.name.as_str(), put.expect);
    let dest = objects_dir.join(name);
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
                let (tmp2, overwrite) = (tmp.clone(), put.overwrite);
                let placed =
                    tokio::task::spawn_blocking(move || fsutil::place(&tmp2, &dest, overwrite))
                        .await
                        .map_err(|e| ApiError::new(500, code::INTERNAL, e.to_string()))?
                        .map_err(|e| ApiError::io("moving the object into place", &e))?;
                match placed {
                    None => Err(taken(name)),
                    Some(replaced) => Ok((
                        UploadCompleted {
                            sha256: hex::encode(sha),
                            size: n,
                            location: wire::object_path(name),
                        },
                        replaced,
                    )),
                }
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
