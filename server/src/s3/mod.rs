//! A small S3 client for the object-store backend (`--store s3://bucket/prefix`).
//!
//! Only what the store needs: put, get, head, delete, list, and multipart uploads, each a
//! SigV4-signed HTTP/1.1 request (hyper; TLS by rustls with the system's roots). The store
//! calls it from blocking threads, so the calls block: each request runs on a small runtime
//! of its own and the caller waits for the answer. One attempt per call — except a
//! pooled connection the server had closed, which is replaced once — because the store
//! answers a failure with a retryable status and the daemon's one retry policy takes over.
//!
//! Configuration comes from where every AWS tool reads it: `AWS_ENDPOINT_URL_S3` /
//! `AWS_ENDPOINT_URL`, `AWS_REGION` / `AWS_DEFAULT_REGION`, the profile (`AWS_PROFILE`,
//! default `default`) in `~/.aws/credentials` and `~/.aws/config`; credentials by the SDKs'
//! chain ([`credentials`]: keys, web identity, container, instance role). A custom endpoint is addressed
//! path-style (`endpoint/bucket/key`), AWS itself virtual-hosted
//! (`bucket.s3.region.amazonaws.com/key`).

mod config;
mod connection;
mod credential_process;
pub mod credentials;
mod multipart;
pub mod sigv4;
mod sts;
pub mod writer;
pub mod xml;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};

pub use config::Config;
use connection::{Connections, Parts};
use credentials::Provider;
use sigv4::{Signable, UNSIGNED_PAYLOAD};

/// How long one S3 request may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed S3 call: the HTTP status and S3's error code when the server answered.
#[derive(Debug, Clone)]
pub struct S3Error {
    pub status: Option<u16>,
    pub code: String,
    pub message: String,
}

impl S3Error {
    pub(super) fn transport(message: impl Into<String>) -> S3Error {
        S3Error {
            status: None,
            code: "Transport".into(),
            message: message.into(),
        }
    }

    /// The store's precondition (`If-None-Match: *`) did not hold: the key exists.
    pub fn is_precondition_failed(&self) -> bool {
        self.status == Some(412) || self.code == "PreconditionFailed"
    }

    /// S3 (or this S3-compatible store) does not do what was asked, e.g. a conditional
    /// delete.
    pub fn is_not_implemented(&self) -> bool {
        self.status == Some(501) || self.code == "NotImplemented"
    }

    /// The key (or upload) does not exist. A missing bucket is not that: it is an error.
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404) && self.code != "NoSuchBucket"
    }

    /// Worth trying again later: no answer, throttling, a server error (also one S3 puts
    /// in a 200 answer's body), or two conditional writes to one key at once.
    pub fn is_transient(&self) -> bool {
        self.status.is_none_or(|s| s >= 500 || s == 429 || s == 408)
            || matches!(
                self.code.as_str(),
                "SlowDown"
                    | "RequestTimeout"
                    | "InternalError"
                    | "ServiceUnavailable"
                    | "ConditionalRequestConflict"
            )
    }
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "S3 answered {s} {}: {}", self.code, self.message),
            None => write!(f, "S3 unreachable: {}", self.message),
        }
    }
}

impl std::error::Error for S3Error {}

/// What a conditional write requires of its key.
pub enum Precondition<'a> {
    /// No object at the key (`If-None-Match: *`).
    Absent,
    /// The object there has this ETag (`If-Match`).
    ETag(&'a str),
}

fn etag_of(headers: &HeaderMap) -> String {
    headers
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// An answer: status, headers, whole body.
pub struct Answer {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An object's size and user metadata (`x-amz-meta-*`, names without the prefix).
pub struct Head {
    pub size: u64,
    pub metadata: HashMap<String, String>,
}

/// One key of a listing.
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// ISO 8601, so it sorts as text.
    pub last_modified: String,
}

/// A client for one bucket.
#[derive(Clone)]
pub struct S3 {
    inner: Arc<Inner>,
}

struct Inner {
    conns: Connections,
    /// `/bucket` for path-style addressing, else empty.
    bucket_path: String,
    bucket: String,
    region: String,
    creds: Provider,
    rt: &'static tokio::runtime::Runtime,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl S3 {
    pub fn new(config: Config) -> Result<S3, String> {
        // The runtime lives as long as the process: dropping a runtime from inside another
        // (the server's, when the store goes) is not allowed.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-client")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the S3 client's runtime: {e}"))?;
        let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
        let (authority, bucket_path) = match config.path_style {
            true => (config.authority, format!("/{}", config.bucket)),
            false => (
                format!("{}.{}", config.bucket, config.authority),
                String::new(),
            ),
        };
        let conns = Connections::new(config.https, authority, config.ca_bundle.as_deref())?;
        let creds = Provider::new(config.credentials, config.ca_bundle.as_deref())?;
        Ok(S3 {
            inner: Arc::new(Inner {
                conns,
                bucket_path,
                bucket: config.bucket,
                region: config.region,
                creds,
                rt,
            }),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    /// Stores `body` at `key`. `sha256`: the body's hash if known (it is then signed);
    /// `create_only`: fail with 412 if the key exists.
    pub fn put(
        &self,
        key: &str,
        body: Vec<Bytes>,
        sha256: Option<[u8; 32]>,
        create_only: bool,
        metadata: &[(&str, &str)],
    ) -> Result<(), S3Error> {
        let mut headers = checksum_header(&body);
        if create_only {
            headers.push(("if-none-match".into(), "*".into()));
        }
        for (k, v) in metadata {
            headers.push((format!("x-amz-meta-{k}"), v.to_string()));
        }
        self.call(Method::PUT, key, Vec::new(), headers, body, sha256)
            .map(drop)
    }

    /// Stores `body` at `key` only if `pre` holds (else an error that
    /// [`S3Error::is_precondition_failed`], or not found for a replaced key that is gone);
    /// returns the new object's ETag. A compare-and-swap on one key.
    pub fn put_if(
        &self,
        key: &str,
        body: Vec<Bytes>,
        pre: Precondition<'_>,
    ) -> Result<String, S3Error> {
        let mut headers = checksum_header(&body);
        headers.push(match pre {
            Precondition::Absent => ("if-none-match".into(), "*".into()),
            Precondition::ETag(tag) => ("if-match".into(), tag.to_string()),
        });
        let a = self.call(Method::PUT, key, Vec::new(), headers, body, None)?;
        Ok(etag_of(&a.headers))
    }

    /// The object at `key` and its ETag, `None` if there is none.
    pub fn get_tagged(&self, key: &str) -> Result<Option<(Bytes, String)>, S3Error> {
        match self.call(Method::GET, key, Vec::new(), Vec::new(), Vec::new(), None) {
            Ok(a) => Ok(Some((a.body, etag_of(&a.headers)))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes `key` only if its ETag is still `etag` (a missing key succeeds).
    pub fn delete_if(&self, key: &str, etag: &str) -> Result<(), S3Error> {
        let headers = vec![("if-match".into(), etag.to_string())];
        match self.call(Method::DELETE, key, Vec::new(), headers, Vec::new(), None) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The object at `key`, `None` if there is none.
    pub fn get(&self, key: &str) -> Result<Option<Bytes>, S3Error> {
        match self.call(Method::GET, key, Vec::new(), Vec::new(), Vec::new(), None) {
            Ok(a) => Ok(Some(a.body)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bytes `first..=last` of the object at `key`, `None` if there is none.
    pub fn get_range(&self, key: &str, first: u64, last: u64) -> Result<Option<Bytes>, S3Error> {
        let headers = vec![("range".to_string(), format!("bytes={first}-{last}"))];
        match self.call(Method::GET, key, Vec::new(), headers, Vec::new(), None) {
            Ok(a) => Ok(Some(a.body)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The size and metadata of the object at `key`, `None` if there is none.
    pub fn head(&self, key: &str) -> Result<Option<Head>, S3Error> {
        let a = match self.call(Method::HEAD, key, Vec::new(), Vec::new(), Vec::new(), None) {
            Ok(a) => a,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = a
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let metadata = a
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let name = k.as_str().strip_prefix("x-amz-meta-")?;
                Some((name.to_string(), v.to_str().ok()?.to_string()))
            })
            .collect();
        Ok(Some(Head { size, metadata }))
    }

    /// Deletes `key` (deleting a missing key succeeds, as in S3).
    pub fn delete(&self, key: &str) -> Result<(), S3Error> {
        match self.call(
            Method::DELETE,
            key,
            Vec::new(),
            Vec::new(),
            Vec::new(),
            None,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Checks that the bucket exists and these credentials may list it (one key at most
    /// under `prefix`).
    pub fn check_bucket(&self, prefix: &str) -> Result<(), S3Error> {
        let query = vec![
            ("list-type".to_string(), "2".to_string()),
            ("max-keys".to_string(), "1".to_string()),
            ("prefix".to_string(), prefix.to_string()),
        ];
        self.call(Method::GET, "", query, Vec::new(), Vec::new(), None)
            .map(drop)
    }

    /// Every key under `prefix`, in key order (ListObjectsV2, page by page).
    pub fn list(&self, prefix: &str) -> Result<Vec<Listed>, S3Error> {
        self.list_with(prefix, false).map(|(keys, _)| keys)
    }

    /// The "directories" right under `prefix` (`prefix<name>/`, the common prefixes of a
    /// listing delimited by `/`), without listing what is inside them.
    pub fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        self.list_with(prefix, true).map(|(_, dirs)| dirs)
    }

    fn list_with(&self, prefix: &str, dirs: bool) -> Result<(Vec<Listed>, Vec<String>), S3Error> {
        let mut out = Vec::new();
        let mut common = Vec::new();
        let mut token: Option<String> = None;
        // Bounded: a listing of more than 10 million keys is not one this store makes.
        for _ in 0..10_000 {
            let mut query = vec![
                ("list-type".to_string(), "2".to_string()),
                ("prefix".to_string(), prefix.to_string()),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token".into(), t.clone()));
            }
            if dirs {
                query.push(("delimiter".into(), "/".into()));
            }
            let a = self.call(Method::GET, "", query, Vec::new(), Vec::new(), None)?;
            let xml = String::from_utf8_lossy(&a.body);
            for item in xml::blocks(&xml, "Contents") {
                let (Some(key), Some(size)) = (xml::first(item, "Key"), xml::first(item, "Size"))
                else {
                    continue;
                };
                out.push(Listed {
                    key,
                    size: size.parse().unwrap_or(0),
                    last_modified: xml::first(item, "LastModified").unwrap_or_default(),
                });
            }
            for item in xml::blocks(&xml, "CommonPrefixes") {
                common.extend(xml::first(item, "Prefix"));
            }
            token = match xml::first(&xml, "IsTruncated").as_deref() {
                Some("true") => {
                    Some(xml::first(&xml, "NextContinuationToken").ok_or_else(|| {
                        S3Error::transport("a truncated listing without a continuation token")
                    })?)
                }
                _ => None,
            };
            if token.is_none() {
                return Ok((out, common));
            }
        }
        Err(S3Error::transport(format!(
            "listing {prefix} did not end after 10000 pages"
        )))
    }

    /// Signs and sends one request, and waits for its answer. A non-2xx answer is an error
    /// carrying S3's code and message.
    fn call(
        &self,
        method: Method,
        key: &str,
        query: Vec<(String, String)>,
        mut headers: Vec<(String, String)>,
        body: Vec<Bytes>,
        sha256: Option<[u8; 32]>,
    ) -> Result<Answer, S3Error> {
        let inner = &self.inner;
        let path = format!("{}/{}", inner.bucket_path, sigv4::uri_encode(key, false));
        let payload_hash = match sha256 {
            Some(h) => hex::encode(h),
            None if body.is_empty() => hex::encode(sha2::Sha256::digest_bytes(b"")),
            None => UNSIGNED_PAYLOAD.to_string(),
        };
        let now = now_secs();
        let creds = inner.creds.current(inner.rt, now)?;
        let amz_date = sigv4::amz_date(now);
        headers.push(("host".into(), inner.conns.authority.clone()));
        headers.push(("x-amz-date".into(), amz_date.clone()));
        headers.push(("x-amz-content-sha256".into(), payload_hash.clone()));
        if let Some(t) = &creds.session_token {
            headers.push(("x-amz-security-token".into(), t.clone()));
        }
        let auth = sigv4::authorization(
            &creds,
            &inner.region,
            &amz_date,
            &Signable {
                method: method.as_str(),
                path: &path,
                query: &query,
                headers: &headers,
                payload_hash: &payload_hash,
            },
        );
        let query = sigv4::canonical_query(&query);
        let uri = match query.is_empty() {
            true => path,
            false => format!("{path}?{query}"),
        };
        let len: u64 = body.iter().map(|b| b.len() as u64).sum();
        let build = move || -> Result<Request<Parts>, S3Error> {
            let mut req = Request::builder().method(method.clone()).uri(uri.as_str());
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            req.header(http::header::AUTHORIZATION, auth.as_str())
                .header(http::header::CONTENT_LENGTH, len)
                .body(Parts::new(body.clone()))
                .map_err(|e| S3Error::transport(format!("building the request: {e}")))
        };
        let inner2 = Arc::clone(inner);
        // Sent again on a fresh connection only if a repeat cannot do harm: not a
        // conditional write (`If-None-Match`, `If-Match`) nor a multipart start or completion (POST), which the store
        // may have applied before the connection broke.
        let (head_only, repeatable) = {
            let req = build()?;
            let repeatable = req.method() != Method::POST
                && !req.headers().contains_key("if-none-match")
                && !req.headers().contains_key("if-match");
            (req.method() == Method::HEAD, repeatable)
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        inner.rt.spawn(async move {
            let answer =
                tokio::time::timeout(REQUEST_TIMEOUT, inner2.conns.roundtrip(build, repeatable))
                    .await;
            let answer = answer.unwrap_or_else(|_| {
                Err(S3Error::transport(format!(
                    "no answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )))
            });
            let _ = tx.send(answer);
        });
        let (status, headers, body) = rx
            .recv()
            .map_err(|_| S3Error::transport("the S3 request task stopped"))??;
        if (200..300).contains(&status) {
            return Ok(Answer { headers, body });
        }
        let xml = String::from_utf8_lossy(&body);
        let code = match head_only {
            // A HEAD answer has no body to name the error.
            true => format!("Http{status}"),
            false => xml::first(&xml, "Code").unwrap_or_else(|| format!("Http{status}")),
        };
        Err(S3Error {
            status: Some(status),
            code,
            message: xml::first(&xml, "Message").unwrap_or_default(),
        })
    }
}

/// `x-amz-checksum-crc32c` for a body: S3 verifies the bytes it received against it.
/// The body of a 200 answer as text, or the error it holds: a copy and a multipart
/// completion may fail after S3 has sent its 200 (the work takes long).
fn error_in_200(body: &[u8]) -> Result<String, S3Error> {
    let xml = String::from_utf8_lossy(body).into_owned();
    match xml::first(&xml, "Code") {
        Some(code) => Err(S3Error {
            status: Some(200),
            message: xml::first(&xml, "Message").unwrap_or_default(),
            code,
        }),
        None => Ok(xml),
    }
}

fn checksum_header(body: &[Bytes]) -> Vec<(String, String)> {
    let crc = body.iter().fold(0u32, |c, b| crc32c::crc32c_append(c, b));
    vec![("x-amz-checksum-crc32c".to_string(), crc32c_text(crc))]
}

/// A CRC32C as S3 writes it (base64 of the big-endian bytes).
pub fn crc32c_text(crc: u32) -> String {
    base64_encode(&crc.to_be_bytes())
}

fn base64_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-256 of a byte slice as an array.
trait DigestBytes {
    fn digest_bytes(data: &[u8]) -> [u8; 32];
}

impl DigestBytes for sha2::Sha256 {
    fn digest_bytes(data: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(data).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_a_crc() {
        assert_eq!(base64_encode(&[0, 0, 0, 0]), "AAAAAA==");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
    }
}
