//! The wire protocol's request handling, independent of the HTTP version carrying it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use uplink_proto::wire::{
    self, ChunkPageQuery, CompleteUpload, CreateUpload, ErrorBody, Route, code,
};

use crate::chunk_put;
use crate::clients::{Client, ClientSource, Clients};
use crate::error::ApiError;
use crate::limits::{self, Budget, Connections, IdleBody, Limits};
use crate::objects;
use crate::store::Store;

/// Largest JSON request body.
const MAX_JSON_BODY: u64 = 64 * 1024;
/// A refused request's body is read up to this much before the answer goes out.
const DRAIN_LIMIT: usize = 256 * 1024;
/// ... and for at most this long.
const DRAIN_TIME: Duration = Duration::from_secs(1);

pub type ResponseBody = Full<Bytes>;

/// Shared state of all connections.
pub struct App {
    pub store: Store,
    /// Who may call, by bearer credential; swapped whole on reload.
    pub clients: RwLock<Arc<Clients>>,
    /// Where the clients were read from (read again on SIGHUP).
    pub client_source: ClientSource,
    /// `Alt-Svc` value advertised on responses (HTTP/3), if any.
    pub alt_svc: Option<String>,
    pub limits: Limits,
    /// Request body bytes held in memory, all connections together.
    pub buffered: Arc<Budget>,
    /// Connections open, HTTP/2 and HTTP/3 together.
    pub connections: Arc<Connections>,
}

/// Handles one request; never fails (errors become JSON error responses).
pub async fn handle<B>(app: Arc<App>, req: Request<B>) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let req = req.map(|body| IdleBody::new(body, app.limits.body_idle));
    let mut resp = match route(&app, req).await {
        Ok(r) => r,
        Err(e) => {
            // A 503 with Retry-After is a limit doing its job, not a failure.
            if e.status >= 500 && e.retry_after.is_none() {
                tracing::error!(error = %e, "request failed");
            } else {
                tracing::debug!(error = %e, "request refused");
            }
            error_response(&e)
        }
    };
    if let Some(alt) = &app.alt_svc
        && let Ok(v) = http::HeaderValue::from_str(alt)
    {
        resp.headers_mut().insert(wire::HDR_ALT_SVC, v);
    }
    resp
}

pub fn error_response(e: &ApiError) -> Response<ResponseBody> {
    let body = ErrorBody {
        code: e.code.to_string(),
        message: e.message.clone(),
    };
    let mut resp = json(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    );
    if let Some(secs) = e.retry_after {
        resp.headers_mut()
            .insert(wire::HDR_RETRY_AFTER, http::HeaderValue::from(secs));
    }
    resp
}

pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

async fn route<B>(app: &Arc<App>, req: Request<B>) -> Result<Response<ResponseBody>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let path = req.uri().path().to_owned();
    let Some(route) = wire::parse_route(&path) else {
        let e = ApiError::new(404, code::NOT_FOUND, format!("no such path {path}"));
        return refuse(req, e).await;
    };
    let method = req.method().clone();
    if route == Route::Ping {
        return match method {
            Method::HEAD | Method::GET => Ok(empty(StatusCode::NO_CONTENT)),
            _ => Err(not_allowed(&method, &path)),
        };
    }
    let client = match authorize(app, req.headers()) {
        Ok(client) => client,
        Err(e) => return refuse(req, e).await,
    };
    let tenant = client.id.as_str();
    match (route, method) {
        (Route::Uploads, Method::POST) => {
            let key = header_str(req.headers(), wire::HDR_IDEMPOTENCY_KEY)?.map(str::to_owned);
            let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
            let create: CreateUpload = parse_json(&body)?;
            let (app2, client2) = (Arc::clone(app), Arc::clone(&client));
            let created =
                blocking(move || app2.store.create(&client2.id, key.as_deref(), &create)).await?;
            Ok(json(StatusCode::CREATED, &created))
        }
        (Route::Upload(id), Method::GET) => {
            let (app2, id, client2) = (Arc::clone(app), id.to_owned(), Arc::clone(&client));
            let state =
                blocking(move || Ok(app2.store.get_fresh(&client2.id, &id)?.state())).await?;
            Ok(json(StatusCode::OK, &state))
        }
        (Route::Chunks(id), Method::GET) => {
            let q = ChunkPageQuery::parse(req.uri().query()).ok_or_else(|| {
                ApiError::new(
                    400,
                    code::BAD_REQUEST,
                    "the chunk list takes only from=<offset>&limit=<n>",
                )
            })?;
            let (app2, id, client2) = (Arc::clone(app), id.to_owned(), Arc::clone(&client));
            let page = blocking(move || Ok(app2.store.get_fresh(&client2.id, &id)?.chunk_page(&q)))
                .await?;
            Ok(json(StatusCode::OK, &page))
        }
        (Route::Upload(id), Method::DELETE) => {
            let (app2, id, client2) = (Arc::clone(app), id.to_owned(), Arc::clone(&client));
            blocking(move || app2.store.delete(&client2.id, &id)).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (Route::Complete(id), Method::POST) => {
            let body = read_body(req.into_body(), MAX_JSON_BODY).await?;
            let session = app.store.get(tenant, id)?;
            let complete: CompleteUpload = parse_json(&body)?;
            // Writing the object from an object store holds chunks in memory: they count
            // with request bodies against the server's budget.
            let held = match app.store.remote() {
                Some(_) => Some(app.buffered.try_take(session.assembly_bytes()).ok_or_else(
                    || {
                        ApiError::new(
                            503,
                            code::BUSY,
                            "the server holds as many bytes as it may; complete again shortly",
                        )
                        .retry_in(2)
                    },
                )?),
                None => None,
            };
            let app2 = Arc::clone(app);
            let done = blocking(move || {
                let _held = held;
                session.complete(&app2.store, &complete.merkle_root, complete.size)
            })
            .await?;
            Ok(json(StatusCode::OK, &done))
        }
        (Route::Chunk(id, offset), Method::PUT) => {
            chunk_put::put_chunk(app, &client, id, offset, req).await
        }
        (Route::ChunkResume(id, offset), Method::POST) => {
            chunk_put::resume_chunk(app, &client, id, offset, req.headers())
        }
        (Route::Object(name), Method::PUT) => objects::put(app, tenant, name, req).await,
        (_, method) => Err(not_allowed(&method, &path)),
    }
}

/// Answers `e` after reading a little of the body, so a client still sending it sees the
/// answer rather than a reset stream.
async fn refuse<B>(req: Request<B>, e: ApiError) -> Result<Response<ResponseBody>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut body = req.into_body();
    drain(&mut body).await;
    Err(e)
}

/// The client this request's bearer credential belongs to.
fn authorize(app: &App, headers: &HeaderMap) -> Result<Arc<Client>, ApiError> {
    let unauthorized = || {
        ApiError::new(
            401,
            code::UNAUTHORIZED,
            "missing or wrong bearer credential (derived from the token file: \
             uplink-server --token-file FILE --print-bearer)",
        )
    };
    let value = headers
        .get(wire::HDR_AUTHORIZATION)
        .ok_or_else(unauthorized)?;
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let clients = Arc::clone(&app.clients.read().unwrap_or_else(|p| p.into_inner()));
    clients.authenticate(presented).ok_or_else(unauthorized)
}

impl App {
    /// Reads the clients again (SIGHUP): a rotated or added secret takes effect, a
    /// removed one stops working. On error the clients in use stay.
    pub fn reload_clients(&self) -> Result<usize, String> {
        let fresh = Clients::load(&self.client_source)?;
        let n = fresh.len();
        self.store.set_tenant_quotas(fresh.quotas());
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(n)
    }
}

fn not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        405,
        code::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {path}"),
    )
}

pub(crate) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    h.get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_header(format!("{name} is not ASCII")))
        })
        .transpose()
}

pub(crate) fn required<'a>(h: &'a HeaderMap, name: &str) -> Result<&'a str, ApiError> {
    header_str(h, name)?.ok_or_else(|| ApiError::bad_header(format!("missing header {name}")))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, code::BAD_REQUEST, format!("bad JSON body: {e}")))
}

/// Reads a whole body of at most `limit` bytes, as the frames it arrived in (no copy).
/// A request body that ended before its end (the client reset it or lost the connection).
pub(crate) fn interrupted(e: impl std::fmt::Display) -> ApiError {
    let e = e.to_string();
    if limits::is_idle(&e) {
        return ApiError::new(408, code::BODY_TIMEOUT, e);
    }
    ApiError::new(
        400,
        code::BAD_REQUEST,
        format!("request body interrupted: {e}"),
    )
}

pub(crate) async fn read_parts<B>(mut body: B, limit: u64) -> Result<Vec<Bytes>, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut parts = Vec::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(interrupted)?;
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            if len > limit {
                return Err(ApiError::new(
                    400,
                    code::LENGTH_MISMATCH,
                    format!("request body exceeds {limit} bytes"),
                ));
            }
            if !data.is_empty() {
                parts.push(data);
            }
        }
    }
    Ok(parts)
}

/// Reads a whole (small) body of at most `limit` bytes into one buffer.
async fn read_body<B>(body: B, limit: u64) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let parts = read_parts(body, limit).await.map_err(|e| match e.code {
        code::LENGTH_MISMATCH => ApiError::new(
            413,
            code::BODY_TOO_LARGE,
            format!("a JSON request body is limited to {limit} bytes"),
        ),
        _ => e,
    })?;
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().unwrap_or_default());
    }
    Ok(parts.concat().into())
}

/// Runs file-system work off the reactor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(500, code::INTERNAL, format!("worker failed: {e}")))?
}

/// Reads and drops up to [`DRAIN_LIMIT`] bytes of a body, for at most [`DRAIN_TIME`].
pub(crate) async fn drain<B>(body: &mut B)
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let read = async {
        let mut seen = 0usize;
        while seen < DRAIN_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}
