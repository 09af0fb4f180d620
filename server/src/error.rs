//! The server's one error type: an HTTP status, a stable code and a sentence.

use uplink_proto::wire::code;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds a client should wait before trying again (sent as `Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, telling the client when to try again (`Retry-After`).
    pub fn retry_in(self, secs: u32) -> Self {
        Self {
            retry_after: Some(secs),
            ..self
        }
    }

    pub fn bad_header(message: impl Into<String>) -> Self {
        Self::new(400, code::BAD_HEADER, message)
    }

    pub fn unknown_upload(id: &str) -> Self {
        Self::new(404, code::UNKNOWN_UPLOAD, format!("no upload {id}"))
    }

    /// An I/O failure while storing: 507 when the disk is full, a retryable 503 when the
    /// process or system ran out of file descriptors (they free up as sessions finish),
    /// else 500.
    pub fn io(what: &str, e: &std::io::Error) -> Self {
        if crate::fsutil::is_disk_full(e) {
            Self::new(507, code::DISK_FULL, format!("{what}: disk full"))
        } else if crate::fsutil::is_out_of_files(e) {
            Self::new(
                503,
                code::UNAVAILABLE,
                format!("{what}: too many open files, try again shortly"),
            )
            .retry_in(1)
        } else {
            Self::new(500, code::INTERNAL, format!("{what}: {e}"))
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}
