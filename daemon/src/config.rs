//! The daemon's configuration: a TOML file, overridden by command-line flags, with
//! defaults from the platform's standard directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use uplink_proto::integrity::Credentials;

pub use uplink_proto::paths::{SOCKET_ENV, default_state_dir};

use crate::jobs::Retention;
use crate::transport::ct::LogList;
use crate::transport::pin::SpkiPin;
use crate::transport::tls::Trust;

/// Every setting, each optional: what the TOML file says, or what the flags say.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub endpoint: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// `sha256/<base64>` keys of CAs the server's chain must run through.
    pub pin_spki: Option<Vec<String>>,
    /// Certificate Transparency: `auto` (on when the server is trusted through the
    /// system's CAs, off for a `ca_file`), `on` or `off`.
    pub ct: Option<String>,
    /// The CT log list (Google's `log_list.json`, v3).
    pub ct_logs: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub streams: Option<u32>,
    pub connections: Option<u32>,
    pub chunk_size: Option<u64>,
    pub keep_warm_seconds: Option<u32>,
    pub keep_finished_jobs: Option<u64>,
    pub keep_finished_days: Option<u32>,
    pub sysfs_root: Option<PathBuf>,
}

impl Settings {
    /// These settings, with `other` filling the gaps.
    fn or(self, other: Settings) -> Settings {
        Settings {
            endpoint: self.endpoint.or(other.endpoint),
            token_file: self.token_file.or(other.token_file),
            ca_file: self.ca_file.or(other.ca_file),
            pin_spki: self.pin_spki.or(other.pin_spki),
            ct: self.ct.or(other.ct),
            ct_logs: self.ct_logs.or(other.ct_logs),
            state_dir: self.state_dir.or(other.state_dir),
            socket: self.socket.or(other.socket),
            streams: self.streams.or(other.streams),
            connections: self.connections.or(other.connections),
            chunk_size: self.chunk_size.or(other.chunk_size),
            keep_warm_seconds: self.keep_warm_seconds.or(other.keep_warm_seconds),
            keep_finished_jobs: self.keep_finished_jobs.or(other.keep_finished_jobs),
            keep_finished_days: self.keep_finished_days.or(other.keep_finished_days),
            sysfs_root: self.sysfs_root.or(other.sysfs_root),
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `https://host:port` of the ingest server.
    pub endpoint: String,
    /// Derived from the token file: the bearer credential to send and the chunk secret
    /// to sign with (the file's secret itself is not kept).
    pub credentials: Credentials,
    /// Read again when the server refuses the credential (a rotated secret).
    pub token_file: PathBuf,
    /// PEM CA certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// CA-level key pins and Certificate Transparency; see [`crate::transport::tls`].
    pub trust: Trust,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Requests in flight at once; `None`: the speed tier's (4/8/12/12).
    pub streams: Option<u32>,
    /// TCP connections the streams are spread over.
    pub connections: u32,
    /// Fixed chunk size; `None`: the speed tier's (1/4/16/32 MiB, small at first).
    pub chunk_size: Option<u64>,
    /// How long a prewarmed connection is kept warm without an Enqueue.
    pub keep_warm_seconds: u32,
    /// Finished jobs (completed, failed, cancelled) kept for `ls`/GetJob: at most this
    /// many, and none finished longer ago than `keep_finished_days`.
    pub keep_finished_jobs: u64,
    pub keep_finished_days: u32,
    /// Where heat and power readings come from (Status only): `/sys`, or a container's
    /// mount of it.
    pub sysfs_root: PathBuf,
}

impl Config {
    pub fn retention(&self) -> Retention {
        Retention {
            keep: self.keep_finished_jobs,
            max_age: Duration::from_secs(u64::from(self.keep_finished_days) * 86_400),
        }
    }
}

pub const DEFAULT_STREAMS: u32 = 12;
pub const DEFAULT_CONNECTIONS: u32 = 4;
pub const DEFAULT_KEEP_WARM_SECONDS: u32 = 300;
pub const DEFAULT_KEEP_FINISHED_JOBS: u64 = 1000;
pub const DEFAULT_KEEP_FINISHED_DAYS: u32 = 7;
/// Bounds of the retention settings: at least one finished job for a day, so a client
/// that just saw its job end can still read it; at most what a listing can page through.
const KEEP_FINISHED_JOBS_RANGE: std::ops::RangeInclusive<u64> = 1..=1_000_000;
const KEEP_FINISHED_DAYS_RANGE: std::ops::RangeInclusive<u32> = 1..=3650;

/// Default config file: `~/.config/uplink/uplinkd.toml` (or the platform's equivalent).
pub fn default_config_file() -> Option<PathBuf> {
    uplink_proto::paths::project_dirs().map(|d| d.config_dir().join("uplinkd.toml"))
}

impl Config {
    /// Flags first, then the config file (`config`, else the default one if present),
    /// then defaults.
    pub fn resolve(config: Option<PathBuf>, flags: Settings) -> Result<Config, String> {
        let file = match &config {
            Some(p) => load_file(p)?,
            None => match default_config_file().filter(|p| p.exists()) {
                Some(p) => load_file(&p)?,
                None => Settings::default(),
            },
        };
        let s = flags.or(file);
        let endpoint = s.endpoint.ok_or(
            "no endpoint: pass --endpoint https://HOST:PORT or set `endpoint` in the config file",
        )?;
        if !endpoint.starts_with("https://") {
            return Err(format!("endpoint {endpoint:?} must start with https://"));
        }
        let token_file = s
            .token_file
            .ok_or("no token: pass --token-file FILE or set `token_file` in the config file")?;
        let credentials = Credentials::from_token_file(&token_file)?;
        let ct = certificate_transparency(
            &endpoint,
            s.ct.as_deref(),
            s.ct_logs.as_deref(),
            s.ca_file.is_some(),
        )?;
        let pins = s
            .pin_spki
            .unwrap_or_default()
            .iter()
            .map(|p| SpkiPin::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let state_dir = s.state_dir.unwrap_or_else(default_state_dir);
        let socket = s
            .socket
            .or_else(|| std::env::var_os(SOCKET_ENV).map(PathBuf::from))
            .unwrap_or_else(|| uplink_proto::paths::default_socket_in(&state_dir));
        let streams = s.streams.map(|n| n.clamp(1, 64));
        let connections = s
            .connections
            .unwrap_or(DEFAULT_CONNECTIONS)
            .clamp(1, streams.unwrap_or(DEFAULT_STREAMS));
        let chunk_size = s.chunk_size;
        if let Some(chunk_size) = chunk_size
            && !(uplink_proto::wire::MIN_CHUNK_SIZE..=uplink_proto::wire::MAX_CHUNK_SIZE)
                .contains(&chunk_size)
        {
            return Err(format!(
                "chunk size {chunk_size} must lie in {}..={}",
                uplink_proto::wire::MIN_CHUNK_SIZE,
                uplink_proto::wire::MAX_CHUNK_SIZE
            ));
        }
        let keep_finished_jobs = s.keep_finished_jobs.unwrap_or(DEFAULT_KEEP_FINISHED_JOBS);
        if !KEEP_FINISHED_JOBS_RANGE.contains(&keep_finished_jobs) {
            return Err(format!(
                "keep_finished_jobs {keep_finished_jobs} must lie in {}..={}",
                KEEP_FINISHED_JOBS_RANGE.start(),
                KEEP_FINISHED_JOBS_RANGE.end()
            ));
        }
        let keep_finished_days = s.keep_finished_days.unwrap_or(DEFAULT_KEEP_FINISHED_DAYS);
        if !KEEP_FINISHED_DAYS_RANGE.contains(&keep_finished_days) {
            return Err(format!(
                "keep_finished_days {keep_finished_days} must lie in {}..={}",
                KEEP_FINISHED_DAYS_RANGE.start(),
                KEEP_FINISHED_DAYS_RANGE.end()
            ));
        }
        Ok(Config {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            credentials,
            token_file,
            ca_file: s.ca_file,
            trust: Trust { pins, ct },
            state_dir,
            socket,
            streams,
            connections,
            chunk_size,
            keep_warm_seconds: s.keep_warm_seconds.unwrap_or(DEFAULT_KEEP_WARM_SECONDS),
            keep_finished_jobs,
            keep_finished_days,
            sysfs_root: s.sysfs_root.unwrap_or_else(|| PathBuf::from("/sys")),
        })
    }
}

/// The CT log list to check the server's certificate against, if CT is on: by default
/// for a server trusted through the system's CAs (a public endpoint), not for one with
/// its own `ca_file` (a private CA issues no logged certificates).
fn certificate_transparency(
    endpoint: &str,
    mode: Option<&str>,
    logs: Option<&Path>,
    own_ca: bool,
) -> Result<Option<LogList>, String> {
    let (on, why) = match mode.unwrap_or("auto") {
        "on" => (true, "ct = on"),
        "off" => (false, ""),
        "auto" => (!own_ca, "it is trusted through the system's CAs"),
        other => return Err(format!("ct {other:?} must be auto, on or off")),
    };
    match (on, logs) {
        (false, _) => Ok(None),
        (true, Some(path)) => LogList::load(path).map(Some),
        (true, None) => Err(format!(
            "Certificate Transparency is on for {endpoint} ({why}): pass --ct-logs FILE \
             (Google's log_list.json, v3), or --ct off to go without it"
        )),
    }
}

fn load_file(path: &Path) -> Result<Settings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
}
