//! Credentials from a profile's `credential_process`: a command the operator names (aws-vault,
//! IAM Roles Anywhere's `aws_signing_helper`, a vault client) that prints them as JSON.
//!
//! The command runs as the AWS SDK for Rust runs it on Unix, through `sh -c`, with no stdin;
//! it must print `{"Version": 1, "AccessKeyId", "SecretAccessKey"[, "SessionToken"]
//! [, "Expiration"]}` and exit 0. Without `Expiration` the keys are kept for good; with it,
//! the command runs again before they expire, like any temporary credentials.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::S3Error;
use super::credentials::Fetched;
use super::sigv4::{self, Credentials};

/// How much of the command's stderr an error quotes.
const STDERR_QUOTED: usize = 500;

/// Runs `command` and reads the credentials it prints; it is killed past `limit`.
pub fn run(command: &str, limit: Duration) -> Result<Fetched, S3Error> {
    let failed = |what: String| S3Error::transport(format!("credential_process: {what}"));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run sh: {e}")))?;
    // Both pipes drained while it runs: a command that fills one would otherwise block.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "no answer within {} s (killed)",
                    limit.as_secs()
                )));
            }
            Err(e) => return Err(failed(format!("cannot wait for it: {e}"))),
        }
    };
    // A process it left behind may hold the pipes open: wait for them only until the
    // deadline (the caller holds the credentials lock meanwhile).
    let left = || deadline.saturating_duration_since(Instant::now());
    let kept_open = || failed("exited, but something it started keeps its output open".into());
    let out = Zeroizing::new(stdout.recv_timeout(left()).map_err(|_| kept_open())?);
    let err = stderr.recv_timeout(left()).unwrap_or_default();
    if !status.success() {
        let said = String::from_utf8_lossy(&err);
        let said: String = said.trim().chars().take(STDERR_QUOTED).collect();
        return Err(failed(format!("exited with {status}: {said}")));
    }
    parse(&out)
}

/// Reads `pipe` to its end on a thread of its own; the bytes come on the channel.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut out);
        }
        let _ = tx.send(out);
    });
    rx
}

/// The credentials in the command's output.
pub fn parse(out: &[u8]) -> Result<Fetched, S3Error> {
    let bad = |what: &str| S3Error::transport(format!("credential_process printed {what}"));
    let v: serde_json::Value = serde_json::from_slice(out).map_err(|_| bad("no JSON object"))?;
    if v.get("Version").and_then(|x| x.as_u64()) != Some(1) {
        return Err(bad("no \"Version\": 1"));
    }
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let (Some(access_key_id), Some(secret)) = (field("AccessKeyId"), field("SecretAccessKey"))
    else {
        return Err(bad("no AccessKeyId and SecretAccessKey"));
    };
    let expires = match field("Expiration") {
        None => None,
        Some(t) => {
            Some(sigv4::parse_iso8601(&t).ok_or_else(|| bad("an Expiration that is no time"))?)
        }
    };
    Ok(Fetched {
        credentials: Credentials {
            access_key_id,
            secret_access_key: Zeroizing::new(secret),
            session_token: field("SessionToken"),
        },
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn keys_without_an_expiration_are_kept_for_good() {
        let f = run(
            r#"echo '{"Version": 1, "AccessKeyId": "AKID", "SecretAccessKey": "s3cr3t"}'"#,
            LIMIT,
        )
        .unwrap();
        assert_eq!(f.credentials.access_key_id, "AKID");
        assert_eq!(f.credentials.secret_access_key.as_str(), "s3cr3t");
        assert_eq!((f.credentials.session_token, f.expires), (None, None));
    }

    #[test]
    fn temporary_keys_carry_their_token_and_expiry() {
        let f = parse(
            br#"{"Version": 1, "AccessKeyId": "ASIA", "SecretAccessKey": "s",
                "SessionToken": "tok", "Expiration": "2026-12-03T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(f.credentials.session_token.as_deref(), Some("tok"));
        assert_eq!(f.expires, sigv4::parse_iso8601("2026-12-03T10:00:00Z"));
    }

    #[test]
    fn a_failing_command_is_quoted_and_bad_output_named() {
        let e = run("echo 'the token has expired' >&2; exit 3", LIMIT).unwrap_err();
        assert!(e.message.contains("the token has expired"), "{}", e.message);
        for (out, says) in [
            (&br#"{"AccessKeyId": "A", "SecretAccessKey": "s"}"#[..], "Version"),
            (br#"{"Version": 1, "AccessKeyId": "A"}"#, "SecretAccessKey"),
            (b"AKID s3cr3t", "JSON"),
            (
                br#"{"Version": 1, "AccessKeyId": "A", "SecretAccessKey": "s", "Expiration": "soon"}"#,
                "Expiration",
            ),
        ] {
            let e = parse(out).unwrap_err();
            assert!(e.message.contains(says), "{}", e.message);
        }
    }

    #[test]
    fn a_process_left_holding_the_output_open_does_not_hold_the_caller() {
        let e = run(
            r#"sleep 30 & echo '{"Version": 1, "AccessKeyId": "A", "SecretAccessKey": "s"}'"#,
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(e.message.contains("keeps its output open"), "{}", e.message);
    }

    #[test]
    fn a_command_that_hangs_is_killed_at_the_limit() {
        let e = run("sleep 30", Duration::from_millis(300)).unwrap_err();
        assert!(e.message.contains("killed"), "{}", e.message);
    }
}
