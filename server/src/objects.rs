//! `PUT /v1/objects/{name}`: a whole file in one request (small files, `curl -T`).
//!
//! The body streams to a hidden temp file on a blocking thread that hashes as it writes;
//! only a complete body whose SHA-256 matches the optional `X-Content-SHA256` is moved
//! into place, so a failed upload never leaves a partial object. An existing object is
//! replaced only with `X-Overwrite: 1`.

use std::io::Write;
use std::path::{Path, PathBuf};
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
use crate::store::OBJECT_TEMP_PREFIX;

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
    let done = put_object(app, tenant, put, body).await?;
    Ok(json(StatusCode::CREATED, &done))
}

/// One admitted object PUT.
struct PutObject {
    /// The tenant's objects dir (with an object store, where the body waits until whole).
    dir: PathBuf,
    /// In the object store: the tenant, and the store.
    remote: Option<(String, Arc<crate::store::Remote>)>,
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
        let remote = app.store.remote();
        let exists = match remote {
            Some(r) => r.object_exists(&tenant, &name)?,
            None => dir.join(&name).exists(),
        };
        if !overwrite && exists {
            return Err(taken(&name));
        }
        app.store.check_quota(&tenant, declared, false)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::io("making the tenant's objects dir", &e))?;
        Ok(PutObject {
            dir,
            remote: remote.map(|r| (tenant.clone(), Arc::clone(r))),
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

/// What the network side hands the writer thread.
enum Piece {
    Data(Bytes),
    /// The whole body arrived: verify it and move it into place.
    End,
}

/// Receives the body and places the object; returns it and the size it replaced.
///
/// The writer thread owns the temp file from start to end: it places the object only on
/// [`Piece::End`] and removes the file otherwise. A request future dropped midway (the
/// client reset the stream) drops the sender, so the file goes too: an aborted PUT leaves
/// nothing on disk, and a placed one is counted against the quota even if nobody is left
/// to read the answer.
async fn put_object<B>(
    app: &Arc<App>,
    tenant: &str,
    put: PutObject,
    mut body: B,
) -> Result<UploadCompleted, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(QUEUE_FRAMES);
    let (app, tenant) = (Arc::clone(app), tenant.to_string());
    let writer = tokio::task::spawn_blocking(move || {
        let placed = write_and_place(&put, rx);
        if let Ok((done, replaced)) = &placed {
            app.store.note_stored(&tenant, done.size, *replaced);
        }
        placed.map(|(done, _)| done)
    });

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
        if tx.send(Piece::Data(data)).await.is_err() {
            break; // the writer failed; its error is reported below
        }
    }
    if failure.is_none() {
        // Fails only if the writer already stopped on an error, reported below.
        let _ = tx.send(Piece::End).await;
    }
    drop(tx);
    let placed = writer
        .await
        .map_err(|e| ApiError::new(500, code::INTERNAL, format!("writer failed: {e}")))
        .and_then(|r| r);
    match failure {
        Some(e) => Err(e),
        None => placed,
    }
}

/// Writes and hashes the body into a hidden temp file, then places it if the body was
/// whole and matches `X-Content-SHA256`; removes the temp file on every other path.
fn write_and_place(
    put: &PutObject,
    rx: tokio::sync::mpsc::Receiver<Piece>,
) -> Result<(UploadCompleted, u64), ApiError> {
    let mut raw = [0u8; 8];
    rand::rng().fill_bytes(&mut raw);
    let tmp = put
        .dir
        .join(format!("{OBJECT_TEMP_PREFIX}{}", hex::encode(raw)));
    let result = write_and_hash(&tmp, rx).and_then(|written| place_verified(put, &tmp, written));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn place_verified(
    put: &PutObject,
    tmp: &Path,
    written: Option<([u8; 32], u64)>,
) -> Result<(UploadCompleted, u64), ApiError> {
    let Some((sha, n)) = written else {
        return Err(ApiError::new(
            400,
            code::BAD_REQUEST,
            "the request ended before its body did",
        ));
    };
    if put.expect.is_some_and(|want| want != sha) {
        return Err(ApiError::new(
            422,
            code::SHA256_MISMATCH,
            "body does not match X-Content-SHA256",
        ));
    }
    let name = put.name.as_str();
    let placed = match &put.remote {
        Some((tenant, remote)) => {
            let placed = remote.put_file(tenant, name, tmp, put.overwrite);
            let _ = std::fs::remove_file(tmp);
            placed?
        }
        None => fsutil::place(tmp, &put.dir.join(name), put.overwrite)
            .map_err(|e| ApiError::io("moving the object into place", &e))?,
    };
    let Some(replaced) = placed else {
        return Err(taken(name));
    };
    let done = UploadCompleted {
        sha256: hex::encode(sha),
        size: n,
        location: wire::object_path(name),
    };
    Ok((done, replaced))
}

/// Streams the pieces into `path`; `None` if the sender went away before [`Piece::End`].
fn write_and_hash(
    path: &Path,
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
) -> Result<Option<([u8; 32], u64)>, ApiError> {
    let io = |e: std::io::Error| ApiError::io("writing the object", &e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(piece) = rx.blocking_recv() {
        match piece {
            Piece::Data(data) => {
                h.update(&data);
                f.write_all(&data).map_err(io)?;
                n += data.len() as u64;
            }
            Piece::End => {
                f.sync_all().map_err(io)?;
                return Ok(Some((h.finalize().into(), n)));
            }
        }
    }
    Ok(None)
}
