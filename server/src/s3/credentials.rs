//! Where the S3 client's credentials come from, and keeping temporary ones fresh.
//!
//! The chain every AWS SDK walks, in its order ([`super::Config::from_env`] picks the
//! source; nothing is fetched until the first request):
//! 1. static keys: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`),
//!    then the profile in `~/.aws/credentials` / `~/.aws/config`; or the profile's
//!    `credential_process`, a command that prints them ([`super::credential_process`]);
//! 2. a web identity token exchanged at STS (`AssumeRoleWithWebIdentity`): the token file
//!    and role from `AWS_WEB_IDENTITY_TOKEN_FILE` / `AWS_ROLE_ARN` or the profile's
//!    `web_identity_token_file` / `role_arn`, as Kubernetes service accounts (EKS IRSA)
//!    provide them; the file is read anew at every refresh, since the kubelet rotates it;
//!    or a role assumed at STS (`AssumeRole`, signed with the keys of the profile's
//!    `source_profile`);
//! 3. the container endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI` or `_RELATIVE_URI`,
//!    with `AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]`): ECS tasks and EKS Pod Identity;
//! 4. the EC2 instance's role through IMDSv2 (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, off
//!    with `AWS_EC2_METADATA_DISABLED=true`).
//!
//! Temporary credentials are fetched again [`REFRESH_BEFORE`] before they expire. A failed
//! refresh keeps the old ones while they are valid and is tried again after
//! [`RETRY_AFTER`]: one STS hiccup fails no request, and a dead STS is not hammered.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use zeroize::Zeroizing;

use super::S3Error;
use super::connection::{Connections, Parts};
use super::sigv4::{self, Credentials};

/// Temporary credentials are replaced this long before they expire (as the AWS SDKs do).
pub const REFRESH_BEFORE: u64 = 300;
/// After a failed fetch, the next one waits this long.
pub const RETRY_AFTER: u64 = 10;
/// How long STS or the container endpoint may take to answer.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// IMDS is on the instance: it answers at once or not at all.
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
/// Lifetime asked of an IMDSv2 session token.
const IMDS_TOKEN_TTL: &str = "21600";

/// An HTTP(S) endpoint: scheme, `host[:port]` and path.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub https: bool,
    pub authority: String,
    /// Starts with `/` (`/` when the URL had none).
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            _ => return Err(format!("{url:?}: expected http:// or https://")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Endpoint {
            https,
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    pub(super) fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority, self.path)
    }
}

/// Where the container endpoint's `Authorization` value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ContainerToken {
    Value(String),
    /// Read at every fetch (EKS Pod Identity rotates it).
    File(PathBuf),
}

/// One link of the chain, chosen from the environment.
#[derive(Clone, Debug)]
pub enum Source {
    Static(Credentials),
    /// A profile's `credential_process` command line.
    Process(String),
    WebIdentity {
        role_arn: String,
        token_file: PathBuf,
        session_name: String,
        sts: Endpoint,
    },
    /// A role assumed at STS with another profile's keys (`role_arn` + `source_profile`).
    AssumeRole {
        role_arn: String,
        session_name: String,
        external_id: Option<String>,
        source: Credentials,
        sts: Endpoint,
        region: String,
    },
    Container {
        endpoint: Endpoint,
        token: Option<ContainerToken>,
    },
    Imds {
        endpoint: Endpoint,
    },
}

impl Source {
    /// What a log line or an error says about where credentials come from.
    pub fn describe(&self) -> String {
        match self {
            Source::Static(_) => "static keys".into(),
            // The program only: arguments may carry what a log should not.
            Source::Process(command) => format!(
                "credential_process {}",
                command.split_whitespace().next().unwrap_or_default()
            ),
            Source::WebIdentity { role_arn, sts, .. } => {
                format!("web identity for {role_arn} at {}", sts.url())
            }
            Source::AssumeRole {
                role_arn,
                source,
                sts,
                ..
            } => format!(
                "role {role_arn} assumed at {} with key {}",
                sts.url(),
                source.access_key_id
            ),
            Source::Container { endpoint, .. } => format!("container endpoint {}", endpoint.url()),
            Source::Imds { endpoint } => format!("instance metadata at {}", endpoint.url()),
        }
    }
}

/// Credentials and when they stop working (unix seconds; `None`: never).
#[derive(Debug)]
pub struct Fetched {
    pub credentials: Credentials,
    pub expires: Option<u64>,
}

/// Should credentials expiring at `expires` be replaced at `now`?
pub fn needs_refresh(now: u64, expires: Option<u64>) -> bool {
    expires.is_some_and(|e| now + REFRESH_BEFORE >= e)
}

#[derive(Default)]
struct State {
    current: Option<(Arc<Credentials>, Option<u64>)>,
    /// No fetch before this time (unix seconds) after a failure.
    retry_after: u64,
    last_error: Option<S3Error>,
}

/// The credentials to sign with, kept fresh.
pub struct Provider {
    source: Source,
    /// Connections to the credentials endpoint (none for static keys).
    conns: Option<Connections>,
    state: Mutex<State>,
}

impl Provider {
    pub fn new(source: Source, ca_bundle: Option<&std::path::Path>) -> Result<Provider, String> {
        let endpoint = match &source {
            Source::Static(_) | Source::Process(_) => None,
            Source::WebIdentity { sts, .. } | Source::AssumeRole { sts, .. } => Some(sts),
            Source::Container { endpoint, .. } | Source::Imds { endpoint } => Some(endpoint),
        };
        let conns = endpoint
            .map(|e| Connections::new(e.https, e.authority.clone(), ca_bundle))
            .transpose()?;
        // Static keys never expire: they are the current ones for good.
        let current = match &source {
            Source::Static(c) => Some((Arc::new(c.clone()), None)),
            _ => None,
        };
        Ok(Provider {
            source,
            conns,
            state: Mutex::new(State {
                current,
                ..State::default()
            }),
        })
    }

    /// Credentials good to sign with at `now`, fetched on `rt` when due (blocking; call from
    /// outside `rt`). Callers wait for one fetch at a time.
    pub fn current(
        &self,
        rt: &'static tokio::runtime::Runtime,
        now: u64,
    ) -> Result<Arc<Credentials>, S3Error> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let still_valid = |s: &State| {
            s.current
                .as_ref()
                .filter(|(_, exp)| exp.is_none_or(|e| now < e))
                .map(|(c, _)| Arc::clone(c))
        };
        if let Some((c, exp)) = &state.current
            && !needs_refresh(now, *exp)
        {
            return Ok(Arc::clone(c));
        }
        if now < state.retry_after {
            return still_valid(&state).ok_or_else(|| {
                state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| S3Error::transport("no S3 credentials yet"))
            });
        }
        match self.fetch_blocking(rt) {
            Ok(f) => {
                let c = Arc::new(f.credentials);
                state.current = Some((Arc::clone(&c), f.expires));
                state.last_error = None;
                Ok(c)
            }
            Err(e) => {
                state.retry_after = now + RETRY_AFTER;
                state.last_error = Some(e.clone());
                still_valid(&state).ok_or(e)
            }
        }
    }

    fn fetch_blocking(&self, rt: &'static tokio::runtime::Runtime) -> Result<Fetched, S3Error> {
        if let Source::Process(command) = &self.source {
            return super::credential_process::run(command, FETCH_TIMEOUT);
        }
        let Some(conns) = &self.conns else {
            return Err(S3Error::transport("no credentials endpoint"));
        };
        let limit = match self.source {
            Source::Imds { .. } => 3 * IMDS_TIMEOUT,
            _ => FETCH_TIMEOUT,
        };
        let what = self.source.describe();
        let fetch = fetch(&self.source, conns);
        let answer = std::thread::scope(|scope| {
            scope
                // The timer is made inside the runtime: it needs its clock.
                .spawn(|| rt.block_on(async { tokio::time::timeout(limit, fetch).await }))
                .join()
        });
        match answer {
            Ok(Ok(Ok(f))) => Ok(f),
            Ok(Ok(Err(e))) => Err(S3Error {
                message: format!("credentials from {what}: {}", e.message),
                ..e
            }),
            Ok(Err(_)) => Err(S3Error::transport(format!(
                "credentials from {what}: no answer within {} s",
                limit.as_secs()
            ))),
            Err(_) => Err(S3Error::transport("the credentials fetch stopped")),
        }
    }
}

async fn fetch(source: &Source, conns: &Connections) -> Result<Fetched, S3Error> {
    match source {
        Source::Static(c) => Ok(Fetched {
            credentials: c.clone(),
            expires: None,
        }),
        Source::Process(_) => Err(S3Error::transport(
            "credential_process runs outside the runtime",
        )),
        Source::WebIdentity {
            role_arn,
            token_file,
            session_name,
            sts,
        } => {
            let token = std::fs::read_to_string(token_file).map_err(|e| {
                S3Error::transport(format!(
                    "cannot read the web identity token {}: {e}",
                    token_file.display()
                ))
            })?;
            super::sts::with_web_identity(conns, sts, role_arn, session_name, token.trim()).await
        }
        Source::AssumeRole {
            role_arn,
            session_name,
            external_id,
            source,
            sts,
            region,
        } => {
            let role = super::sts::Role {
                arn: role_arn,
                session_name,
                external_id: external_id.as_deref(),
            };
            super::sts::assume_role(conns, sts, region, source, &role).await
        }
        Source::Container { endpoint, token } => {
            let auth = match token {
                None => None,
                Some(ContainerToken::Value(v)) => Some(v.clone()),
                Some(ContainerToken::File(f)) => Some(
                    std::fs::read_to_string(f)
                        .map_err(|e| {
                            S3Error::transport(format!(
                                "cannot read the container authorization token {}: {e}",
                                f.display()
                            ))
                        })?
                        .trim()
                        .to_string(),
                ),
            };
            let headers: Vec<_> = auth.into_iter().map(|a| ("authorization", a)).collect();
            let (status, _, body) = send(
                conns,
                Method::GET,
                &endpoint.path,
                &headers,
                Bytes::new(),
                FETCH_TIMEOUT,
            )
            .await?;
            expect_ok(status, &body)?;
            parse_json(&body)
        }
        Source::Imds { endpoint } => {
            let base = endpoint.path.trim_end_matches('/');
            let ttl = [(
                "x-aws-ec2-metadata-token-ttl-seconds",
                IMDS_TOKEN_TTL.into(),
            )];
            let (status, _, token) = send(
                conns,
                Method::PUT,
                &format!("{base}/latest/api/token"),
                &ttl,
                Bytes::new(),
                IMDS_TIMEOUT,
            )
            .await?;
            expect_ok(status, &token)?;
            let token = String::from_utf8_lossy(&token).trim().to_string();
            let with_token = [("x-aws-ec2-metadata-token", token)];
            let roles_path = format!("{base}/latest/meta-data/iam/security-credentials/");
            let (status, _, roles) = send(
                conns,
                Method::GET,
                &roles_path,
                &with_token,
                Bytes::new(),
                IMDS_TIMEOUT,
            )
            .await?;
            if status == 404 {
                return Err(S3Error {
                    status: Some(404),
                    code: "NoInstanceRole".into(),
                    message: "this instance has no IAM role attached".into(),
                });
            }
            expect_ok(status, &roles)?;
            let roles = String::from_utf8_lossy(&roles);
            let role = roles.lines().map(str::trim).find(|l| !l.is_empty());
            let Some(role) = role else {
                return Err(S3Error::transport("IMDS named no instance role"));
            };
            let (status, _, body) = send(
                conns,
                Method::GET,
                &format!("{roles_path}{}", sigv4::uri_encode(role, true)),
                &with_token,
                Bytes::new(),
                IMDS_TIMEOUT,
            )
            .await?;
            expect_ok(status, &body)?;
            parse_json(&body)
        }
    }
}

/// One request to a credentials endpoint: status, headers, body.
pub(super) async fn send(
    conns: &Connections,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
    timeout: Duration,
) -> Result<(u16, HeaderMap, Bytes), S3Error> {
    let build = || -> Result<Request<Parts>, S3Error> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, conns.authority.as_str())
            .header(http::header::CONTENT_LENGTH, body.len());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        req.body(Parts::new(vec![body.clone()]))
            .map_err(|e| S3Error::transport(format!("building the request: {e}")))
    };
    let repeatable = method != Method::POST;
    tokio::time::timeout(timeout, conns.roundtrip(build, repeatable))
        .await
        .map_err(|_| {
            S3Error::transport(format!(
                "{} did not answer within {} s",
                conns.authority,
                timeout.as_secs()
            ))
        })?
}

fn expect_ok(status: u16, body: &[u8]) -> Result<(), S3Error> {
    match status {
        200 => Ok(()),
        _ => Err(S3Error {
            status: Some(status),
            code: format!("Http{status}"),
            message: String::from_utf8_lossy(body).chars().take(200).collect(),
        }),
    }
}

pub(super) fn malformed(what: &str) -> S3Error {
    S3Error {
        status: Some(200),
        code: "MalformedCredentials".into(),
        message: format!("the answer has no {what}"),
    }
}

/// Credentials from the JSON the container endpoint and IMDS answer.
pub fn parse_json(body: &[u8]) -> Result<Fetched, S3Error> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| malformed("JSON"))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .ok_or_else(|| malformed(k))
    };
    if let Some(code) = v.get("Code").and_then(|c| c.as_str())
        && code != "Success"
    {
        return Err(S3Error {
            status: Some(200),
            code: code.to_string(),
            message: field("Message").unwrap_or_default(),
        });
    }
    fetched(
        field("AccessKeyId")?,
        field("SecretAccessKey")?,
        field("Token").ok(),
        &field("Expiration")?,
    )
}

pub(super) fn fetched(
    access_key_id: String,
    secret: String,
    session_token: Option<String>,
    expiration: &str,
) -> Result<Fetched, S3Error> {
    let expires = sigv4::parse_iso8601(expiration).ok_or_else(|| malformed("valid Expiration"))?;
    Ok(Fetched {
        credentials: Credentials {
            access_key_id,
            secret_access_key: Zeroizing::new(secret),
            session_token,
        },
        expires: Some(expires),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_their_path() {
        let e = Endpoint::parse("http://169.254.170.23/v1/credentials").unwrap();
        assert_eq!(
            (e.https, e.authority.as_str(), e.path.as_str()),
            (false, "169.254.170.23", "/v1/credentials")
        );
        let e = Endpoint::parse("https://sts.eu-west-1.amazonaws.com").unwrap();
        assert_eq!((e.https, e.path.as_str()), (true, "/"));
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http:///path").is_err());
    }

    #[test]
    fn temporary_credentials_are_replaced_five_minutes_before_they_expire() {
        assert!(!needs_refresh(1_000, None), "static keys never expire");
        assert!(!needs_refresh(1_000, Some(1_000 + REFRESH_BEFORE + 1)));
        assert!(needs_refresh(1_000, Some(1_000 + REFRESH_BEFORE)));
        assert!(needs_refresh(1_000, Some(900)), "already expired");
    }

    fn key(id: &str) -> Credentials {
        Credentials {
            access_key_id: id.into(),
            secret_access_key: Zeroizing::new("s".into()),
            session_token: Some("t".into()),
        }
    }

    #[test]
    fn a_failed_refresh_keeps_valid_credentials_and_waits_before_trying_again() {
        let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        ));
        // A loopback port nobody listens on: every fetch fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let p = Provider::new(Source::Imds { endpoint }, None).unwrap();
        let now = 10_000;
        let err = p.current(rt, now).err().unwrap();
        assert!(err.message.contains("instance metadata"), "{err}");

        // Due for a refresh but still valid: the refresh fails, the old keys serve.
        {
            let mut st = p.state.lock().unwrap();
            st.current = Some((Arc::new(key("OLD")), Some(now + 60)));
            st.retry_after = 0;
        }
        assert_eq!(p.current(rt, now).unwrap().access_key_id, "OLD");
        assert_eq!(p.state.lock().unwrap().retry_after, now + RETRY_AFTER);
        // Expired while the endpoint is still down: the last error, without a new fetch.
        {
            let mut st = p.state.lock().unwrap();
            st.current = Some((Arc::new(key("OLD")), Some(now + 3)));
            st.last_error = Some(S3Error::transport("remembered"));
        }
        let err = p.current(rt, now + 5).err().unwrap();
        assert_eq!(err.message, "remembered");
        // Fresh keys are used as they are.
        p.state.lock().unwrap().current = Some((Arc::new(key("NEW")), Some(now + 3600)));
        assert_eq!(p.current(rt, now).unwrap().access_key_id, "NEW");
    }

    #[test]
    fn reads_the_container_and_imds_answer() {
        let body = br#"{"Code":"Success","AccessKeyId":"ASIAY","SecretAccessKey":"sec",
            "Token":"t","Expiration":"2026-12-04T09:04:51Z"}"#;
        let f = parse_json(body).unwrap();
        assert_eq!(f.credentials.access_key_id, "ASIAY");
        assert_eq!(f.credentials.session_token.as_deref(), Some("t"));
        assert_eq!(f.expires, Some(1_796_375_091));
        let failed = br#"{"Code":"AssumeRoleUnauthorizedAccess","Message":"no"}"#;
        assert_eq!(
            parse_json(failed).err().unwrap().code,
            "AssumeRoleUnauthorizedAccess"
        );
        assert!(parse_json(b"<html>").is_err());
    }
}
