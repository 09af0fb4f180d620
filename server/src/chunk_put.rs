//! The chunk PUT: headers checked and the chunk's range reserved before any body byte is
//! read; then the body read (LZ4-decoded when so encoded), verified over the raw bytes and
//! stored.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use uplink_proto::chain::FileState;
use uplink_proto::integrity::{self, ChunkDigest, ChunkId};
use uplink_proto::wire::{self, ChunkResume, ChunkStored, code};

use crate::api::{
    App, ResponseBody, blocking, drain, header_str, interrupted, json, read_parts, required,
};
use crate::clients::Client;
use crate::error::ApiError;
use crate::limits::{self, ConnectionBudget, Held};
use crate::store::{BeginChunk, Receipt, Reservation, Session, TakenOver};

/// `PUT /v1/uploads/{id}/chunks/{offset}`.
pub async fn put_chunk<B>(
    app: &Arc<App>,
    client: &Client,
    id: &str,
    offset: u64,
    req: Request<B>,
) -> Result<Response<ResponseBody>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let (head, mut body) = req.into_parts();
    // Answered before the body is read (refused, or a replay): read a little of it first,
    // so a client still sending sees the answer rather than a reset stream.
    match admit(app, client, id, offset, &head) {
        Ok(Admitted::Receive(chunk)) => receive(*chunk, offset, body).await,
        Ok(Admitted::Duplicate { length }) => {
            drain(&mut body).await;
            Ok(json(
                StatusCode::OK,
                &ChunkStored {
                    offset,
                    length,
                    duplicate: true,
                },
            ))
        }
        Err(e) => {
            drain(&mut body).await;
            Err(e)
        }
    }
}

/// What the headers allow, before any body byte is read.
enum Admitted {
    /// The server holds this exact chunk already.
    Duplicate {
        length: u64,
    },
    Receive(Box<Incoming>),
}

/// A chunk whose range is reserved and whose body is to be read.
struct Incoming {
    session: Arc<Session>,
    reservation: Reservation,
    length: u64,
    lz4: bool,
    expect: ChunkDigest,
    /// The file's hash state at the chunk's first byte, when it came as a link.
    from: Option<FileState>,
    /// The body's first bytes, received by an earlier request (a resumed PUT).
    prefix: Vec<Bytes>,
    /// The memory its body may take: the server's share, held until its bytes are stored
    /// and hashed, and its connection's, held until the chunk is answered (the hash
    /// catching up is the server's doing, not the client's).
    held: (Held, Option<Held>),
}

/// A chunk PUT's headers, parsed and authenticated.
struct ChunkHeaders {
    length: u64,
    lz4: bool,
    expect: ChunkDigest,
    /// `X-Chunk-SHA256-From`: the chunk is a link of the file's hash from this state.
    from: Option<FileState>,
    /// `X-Chunk-Resume-From`: the body starts at this byte of the chunk.
    resume_from: u64,
}

/// Parses a chunk's headers and checks its HMAC: only the session's key holder may store,
/// or take over, a chunk. The key derives from the client's chunk secret (during a
/// rotation, the current or the previous one).
fn chunk_headers(
    session: &Session,
    client: &Client,
    offset: u64,
    h: &HeaderMap,
) -> Result<ChunkHeaders, ApiError> {
    let lz4 = match header_str(h, wire::HDR_CONTENT_ENCODING)? {
        None | Some("identity") => false,
        Some(wire::CONTENT_ENCODING_LZ4) => true,
        Some(enc) => {
            return Err(ApiError::new(
                415,
                code::BAD_ENCODING,
                format!("unsupported Content-Encoding {enc} (this server takes lz4 or identity)"),
            ));
        }
    };
    let length: u64 = required(h, wire::HDR_CHUNK_LENGTH)?
        .parse()
        .map_err(|_| ApiError::bad_header("X-Chunk-Length must be a decimal byte count"))?;
    let sha256 = uplink_proto::parse_hex32(required(h, wire::HDR_CHUNK_SHA256)?)
        .ok_or_else(|| ApiError::bad_header("X-Chunk-SHA256 must be 64 hex digits"))?;
    let crc_hex = required(h, wire::HDR_CHUNK_CRC32C)?;
    let crc32c = (crc_hex.len() == 8)
        .then(|| u32::from_str_radix(crc_hex, 16).ok())
        .flatten()
        .ok_or_else(|| ApiError::bad_header("X-Chunk-CRC32C must be 8 hex digits"))?;
    let from = match header_str(h, wire::HDR_CHUNK_SHA256_FROM)? {
        None => None,
        Some(text) => Some(FileState::parse(text, offset).ok_or_else(|| {
            ApiError::bad_header(format!(
                "X-Chunk-SHA256-From must be the file's SHA-256 state at byte {offset}: \
                 64 hex digits, then 2 per byte of the unfinished block ({} here)",
                offset % 64
            ))
        })?),
    };
    let tag = hex::decode(required(h, wire::HDR_CHUNK_HMAC)?)
        .map_err(|_| ApiError::bad_header("X-Chunk-HMAC must be hex"))?;
    let resume_from: u64 = match header_str(h, wire::HDR_CHUNK_RESUME_FROM)? {
        None => 0,
        Some(v) => v.parse().map_err(|_| {
            ApiError::bad_header("X-Chunk-Resume-From must be a decimal byte count")
        })?,
    };
    if resume_from > 0 && (lz4 || resume_from >= length) {
        return Err(ApiError::bad_header(
            "X-Chunk-Resume-From must lie inside the chunk, on an uncompressed body",
        ));
    }
    let chunk = ChunkId {
        offset,
        length,
        sha256: &sha256,
        upload_id: &session.id,
        nonce: session.nonce(),
    };
    let authentic = client.chunk_secrets().any(|secret| {
        let key = integrity::session_key(secret, session.nonce(), &session.id);
        integrity::verify_chunk_tag(&key, &chunk, &tag)
    });
    if !authentic {
        return Err(ApiError::new(
            401,
            code::BAD_HMAC,
            "X-Chunk-HMAC does not authenticate this chunk",
        ));
    }
    Ok(ChunkHeaders {
        length,
        lz4,
        expect: ChunkDigest { sha256, crc32c },
        from,
        resume_from,
    })
}

fn admit(
    app: &App,
    client: &Client,
    id: &str,
    offset: u64,
    head: &http::request::Parts,
) -> Result<Admitted, ApiError> {
    let h = &head.headers;
    let session = app.store.get(&client.id, id)?;
    let ChunkHeaders {
        length,
        lz4,
        expect,
        from,
        resume_from,
    } = chunk_headers(&session, client, offset, h)?;
    let replace = h
        .get(wire::HDR_CHUNK_REPLACE)
        .is_some_and(|v| v.as_bytes() == b"1");
    Ok(
        match session.begin_chunk(offset, length, &expect.sha256, replace)? {
            BeginChunk::Duplicate => Admitted::Duplicate { length },
            BeginChunk::Reserved(reservation) => {
                // An LZ4 body and what it decodes to are both in memory for a moment.
                let bytes = if lz4 { 2 * length } else { length };
                let held = limits::take_for_body(
                    &app.buffered,
                    head.extensions.get::<ConnectionBudget>(),
                    bytes,
                )?;
                let prefix = match resume_from {
                    0 => Vec::new(),
                    from => session.resume_prefix(offset, length, &expect.sha256, from)?,
                };
                Admitted::Receive(Box::new(Incoming {
                    session,
                    reservation,
                    length,
                    lz4,
                    expect,
                    from,
                    prefix,
                    held,
                }))
            }
        },
    )
}

/// `POST /v1/uploads/{id}/chunks/{offset}/resume`: how much of this chunk the server has.
pub fn resume_chunk(
    app: &App,
    client: &Client,
    id: &str,
    offset: u64,
    h: &HeaderMap,
) -> Result<Response<ResponseBody>, ApiError> {
    let session = app.store.get(&client.id, id)?;
    let c = chunk_headers(&session, client, offset, h)?;
    let received = match c.lz4 {
        true => 0,
        false => session.take_over(offset, c.length, &c.expect.sha256),
    };
    Ok(json(
        StatusCode::OK,
        &ChunkResume {
            offset,
            length: c.length,
            received,
        },
    ))
}

/// Reads, decodes and stores an admitted chunk.
async fn receive<B>(
    chunk: Incoming,
    offset: u64,
    body: B,
) -> Result<Response<ResponseBody>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let Incoming {
        session,
        reservation,
        length,
        lz4,
        expect,
        from,
        prefix,
        held: (held, held_by_connection),
    } = chunk;
    let body = match lz4 {
        // A compressed body may be a little larger than its chunk when the data does not
        // compress; LZ4's own bound caps it. It is not resumable.
        true => {
            read_parts(
                body,
                lz4_flex::block::get_maximum_output_size(length as usize) as u64,
            )
            .await?
        }
        false => {
            let receipt = session.receiving(offset, length, &expect.sha256, prefix);
            read_resumable(body, receipt, length).await?
        }
    };
    let s2 = Arc::clone(&session);
    let parts = blocking(move || {
        let parts = match lz4 {
            true => vec![decode_lz4(&body, length)?],
            false => body,
        };
        s2.store_chunk(reservation, &parts, &expect, from.as_ref())?;
        Ok(parts)
    })
    .await?;
    // The running file hash catches up off the request's path: the ack does not wait.
    tokio::task::spawn_blocking(move || {
        session.advance_hash(Some((offset, &parts, expect)));
        drop(held);
    });
    drop(held_by_connection);
    Ok(json(
        StatusCode::CREATED,
        &ChunkStored {
            offset,
            length,
            duplicate: false,
        },
    ))
}

/// Reads an uncompressed chunk body into its receipt, where a resumed request can take the
/// bytes if this one is cut off.
async fn read_resumable<B>(
    mut body: B,
    receipt: Receipt,
    length: u64,
) -> Result<Vec<Bytes>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let taken = || {
        ApiError::new(
            409,
            code::CHUNK_IN_PROGRESS,
            "this chunk's bytes were taken over by a resumed request",
        )
    };
    while let Some(frame) = body.frame().await {
        // Cut off: the receipt parks what arrived, for a resumed PUT.
        let frame = frame.map_err(interrupted)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if receipt.len() + data.len() as u64 > length {
            let from = receipt.prefix_len();
            receipt.discard();
            return Err(ApiError::new(
                400,
                code::LENGTH_MISMATCH,
                format!("request body exceeds the chunk's {length} bytes (from byte {from})"),
            ));
        }
        if !data.is_empty() {
            receipt.push(data).map_err(|TakenOver| taken())?;
        }
    }
    receipt.finish().map_err(|TakenOver| taken())
}

/// Decodes an LZ4 block that must yield exactly `length` bytes.
fn decode_lz4(body: &[Bytes], length: u64) -> Result<Bytes, ApiError> {
    let bad = |what: String| ApiError::new(400, code::BAD_ENCODING, what);
    let compressed = match body {
        [one] => one.clone(),
        many => many.concat().into(),
    };
    let mut raw = vec![0u8; length as usize];
    let n = lz4_flex::block::decompress_into(&compressed, &mut raw)
        .map_err(|e| bad(format!("the LZ4 body does not decode: {e}")))?;
    if n as u64 != length {
        return Err(bad(format!(
            "the LZ4 body decodes to {n} bytes, X-Chunk-Length says {length}"
        )));
    }
    Ok(raw.into())
}
