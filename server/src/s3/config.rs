//! Where the S3 client's settings come from: the `--store` URL, then the environment and
//! the AWS config files, as every AWS tool reads them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::sigv4::Credentials;

/// Everything the client needs.
pub struct Config {
    pub bucket: String,
    /// Key prefix under which the store keeps everything (no leading or trailing `/`).
    pub prefix: String,
    pub https: bool,
    /// `host[:port]` of the endpoint (without the bucket).
    pub authority: String,
    pub path_style: bool,
    pub region: String,
    pub credentials: Credentials,
    pub ca_bundle: Option<PathBuf>,
}

/// Splits `s3://bucket/prefix` into bucket and prefix.
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("--store {url:?}: expected s3://bucket[/prefix]"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid {
        return Err(format!(
            "--store {url:?}: {bucket:?} is not a bucket name (3-63 of a-z 0-9 . -)"
        ));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

impl Config {
    /// The settings for `--store url`, from `env` (the process environment in use) and the
    /// files it names.
    pub fn from_env(url: &str, env: &HashMap<String, String>) -> Result<Config, String> {
        let (bucket, prefix) = parse_url(url)?;
        let var = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let home = var("HOME").map(PathBuf::from);
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let config_file = var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
        let creds_file = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
        let config_section = match profile.as_str() {
            "default" => "default".to_string(),
            p => format!("profile {p}"),
        };
        let from_config = config_file
            .map(|f| read_ini(&f, &config_section))
            .transpose()?
            .unwrap_or_default();
        let from_creds = creds_file
            .map(|f| read_ini(&f, &profile))
            .transpose()?
            .unwrap_or_default();
        let setting = |env_names: &[&str], file_key: &str| {
            env_names
                .iter()
                .find_map(|k| var(k))
                .or_else(|| from_creds.get(file_key).cloned())
                .or_else(|| from_config.get(file_key).cloned())
        };
        let region = setting(&["AWS_REGION", "AWS_DEFAULT_REGION"], "region")
            .unwrap_or_else(|| "us-east-1".into());
        let access_key_id = setting(&["AWS_ACCESS_KEY_ID"], "aws_access_key_id");
        let secret = setting(&["AWS_SECRET_ACCESS_KEY"], "aws_secret_access_key");
        let (Some(access_key_id), Some(secret)) = (access_key_id, secret) else {
            return Err(format!(
                "--store {url}: no S3 credentials (set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, or profile {profile:?} in ~/.aws/credentials)"
            ));
        };
        let credentials = Credentials {
            access_key_id,
            secret_access_key: Zeroizing::new(secret),
            session_token: setting(&["AWS_SESSION_TOKEN"], "aws_session_token"),
        };
        let endpoint = setting(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"], "endpoint_url");
        let (https, authority, path_style) = match endpoint {
            Some(e) => {
                let (https, rest) = match (e.strip_prefix("https://"), e.strip_prefix("http://")) {
                    (Some(r), _) => (true, r),
                    (None, Some(r)) => (false, r),
                    _ => return Err(format!("endpoint {e:?}: expected http:// or https://")),
                };
                let authority = rest.trim_end_matches('/');
                if authority.is_empty() || authority.contains('/') {
                    return Err(format!("endpoint {e:?}: expected scheme://host[:port]"));
                }
                (https, authority.to_string(), true)
            }
            None => (true, format!("s3.{region}.amazonaws.com"), false),
        };
        Ok(Config {
            bucket,
            prefix,
            https,
            authority,
            path_style,
            region,
            credentials,
            ca_bundle: setting(&["AWS_CA_BUNDLE"], "ca_bundle").map(PathBuf::from),
        })
    }
}

/// The `key = value` lines of `[section]` in an INI file (a missing file is empty).
fn read_ini(path: &Path, section: &str) -> Result<HashMap<String, String>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        assert_eq!(
            parse_url("s3://bucket1").unwrap(),
            ("bucket1".into(), "".into())
        );
        assert_eq!(
            parse_url("s3://bucket1/a/b/").unwrap(),
            ("bucket1".into(), "a/b".into())
        );
        assert!(parse_url("http://bucket1").is_err());
        assert!(parse_url("s3://B").is_err());
        assert!(parse_url("s3://").is_err());
    }

    #[test]
    fn the_environment_wins_over_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n\
             [other]\naws_access_key_id = OTHER\naws_secret_access_key = o\n",
        )
        .unwrap();
        let file = creds.to_str().unwrap();
        let c = Config::from_env(
            "s3://bucket1/p",
            &env(&[
                ("AWS_SHARED_CREDENTIALS_FILE", file),
                ("AWS_REGION", "eu-west-1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.credentials.access_key_id, "FILEKEY");
        assert_eq!(c.authority, "s3.eu-west-1.amazonaws.com");
        assert!(c.https && !c.path_style);
        let c = Config::from_env(
            "s3://bucket1/p",
            &env(&[
                ("AWS_SHARED_CREDENTIALS_FILE", file),
                ("AWS_PROFILE", "other"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/"),
            ]),
        )
        .unwrap();
        assert_eq!(c.credentials.access_key_id, "OTHER");
        assert_eq!(
            (c.https, c.authority.as_str(), c.path_style),
            (false, "127.0.0.1:9000", true)
        );
        let c = Config::from_env(
            "s3://bucket1",
            &env(&[("AWS_ACCESS_KEY_ID", "ENV"), ("AWS_SECRET_ACCESS_KEY", "s")]),
        )
        .unwrap();
        assert_eq!(
            (c.credentials.access_key_id.as_str(), c.region.as_str()),
            ("ENV", "us-east-1")
        );
        let missing = Config::from_env("s3://bucket1", &env(&[])).err().unwrap();
        assert!(missing.contains("no S3 credentials"), "{missing}");
    }
}
