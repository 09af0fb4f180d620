//! Client library for `uplinkd`: connect to the daemon's socket and call its API.
//!
//! ```no_run
//! # async fn f() -> Result<(), uplink::ClientError> {
//! let mut c = uplink::connect(&uplink::default_socket()).await?;
//! let job = c.enqueue(uplink::grpc::EnqueueRequest { path: "/data/scan.ply".into(), ..Default::default() }).await?;
//! println!("queued {}", job.into_inner().job_id);
//! # Ok(()) }
//! ```

pub mod follow;
pub mod json;

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub use uplink_proto::grpc;
pub use uplink_proto::grpc::uplink_client::UplinkClient;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach uplinkd at {path}: {message} (is the daemon running? socket from --socket or UPLINK_SOCKET)"
    )]
    Connect { path: PathBuf, message: String },
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
}

/// The daemon's socket: `$UPLINK_SOCKET`, else the platform default.
pub fn default_socket() -> PathBuf {
    uplink_proto::paths::client_socket()
}

/// Connects to the daemon over its Unix socket.
pub async fn connect(socket: &Path) -> Result<UplinkClient<Channel>, ClientError> {
    let path = socket.to_path_buf();
    let err = |message: String| ClientError::Connect {
        path: socket.to_path_buf(),
        message,
    };
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://uplinkd.local")
        .map_err(|e| err(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| err(source_chain(&e)))?;
    Ok(UplinkClient::new(channel))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Walks ListJobs page by page (`req` sets the page size and state filter), handing each
/// job to `each`, until the last page or `limit` jobs. Returns how many it handed over.
pub async fn for_each_job(
    client: &mut UplinkClient<Channel>,
    mut req: grpc::ListJobsRequest,
    limit: Option<usize>,
    mut each: impl FnMut(grpc::Job),
) -> Result<usize, ClientError> {
    let mut seen = 0usize;
    loop {
        let page = client.list_jobs(req.clone()).await?.into_inner();
        for job in page.jobs {
            if limit.is_some_and(|l| seen >= l) {
                return Ok(seen);
            }
            each(job);
            seen += 1;
        }
        if page.next_page_token.is_empty() || limit.is_some_and(|l| seen >= l) {
            return Ok(seen);
        }
        if page.next_page_token == req.page_token {
            // A daemon that does not move on would keep us here forever.
            return Err(ClientError::Rpc(tonic::Status::internal(
                "bad_page_token: the daemon handed back the same page token",
            )));
        }
        req.page_token = page.next_page_token;
    }
}

/// The stable error code of a refused call (`uplink-error-code` metadata).
pub fn error_code(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get("uplink-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A job state's name: `queued`, `running`, `completed`, `failed`, `cancelled`.
/// Milliseconds since the Unix epoch (the daemon's job times are in these).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn state_name(state: i32) -> &'static str {
    match grpc::JobState::try_from(state) {
        Ok(grpc::JobState::Queued) => "queued",
        Ok(grpc::JobState::Running) => "running",
        Ok(grpc::JobState::Completed) => "completed",
        Ok(grpc::JobState::Failed) => "failed",
        Ok(grpc::JobState::Cancelled) => "cancelled",
        Ok(grpc::JobState::Waiting) => "waiting",
        _ => "unknown",
    }
}

pub fn is_terminal(state: i32) -> bool {
    matches!(state_name(state), "completed" | "failed" | "cancelled")
}
