//! Where the S3 client's settings come from: the `--store` URL, then the environment and
//! the AWS config files, as every AWS tool reads them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::credentials::{ContainerToken, Endpoint, Source};
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
    /// Where the credentials come from (fetched at the first request, not here).
    pub credentials: Source,
    pub ca_bundle: Option<PathBuf>,
}

/// The longest key prefix taken. A chunk object's name adds up to about 520 bytes to it
/// (session id, offset, length, digest, and a link's two states), and S3 keys end at 1024.
pub const MAX_PREFIX: usize = 400;

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
    let prefix = prefix.trim_matches('/');
    if prefix.len() > MAX_PREFIX {
        return Err(format!(
            "--store: the prefix is {} bytes; at most {MAX_PREFIX} leave room for the chunk \
             objects' names within S3's 1024-byte keys",
            prefix.len()
        ));
    }
    Ok((bucket.to_string(), prefix.to_string()))
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
            .as_ref()
            .map(|f| read_ini(f, &config_section))
            .transpose()?
            .unwrap_or_default();
        let from_creds = creds_file
            .as_ref()
            .map(|f| read_ini(f, &profile))
            .transpose()?
            .unwrap_or_default();
        // Another profile's settings (a source_profile's keys), credentials file first.
        let other_profile = |name: &str| -> Result<HashMap<String, String>, String> {
            let section = match name {
                "default" => "default".to_string(),
                p => format!("profile {p}"),
            };
            let mut all = config_file
                .as_ref()
                .map(|f| read_ini(f, &section))
                .transpose()?
                .unwrap_or_default();
            if let Some(f) = &creds_file {
                all.extend(read_ini(f, name)?);
            }
            Ok(all)
        };
        let setting = |env_names: &[&str], file_key: &str| {
            env_names
                .iter()
                .find_map(|k| var(k))
                .or_else(|| from_creds.get(file_key).cloned())
                .or_else(|| from_config.get(file_key).cloned())
        };
        let region = setting(&["AWS_REGION", "AWS_DEFAULT_REGION"], "region")
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = setting(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"], "endpoint_url");
        let (https, authority, path_style) = match endpoint {
            Some(e) => {
                let parsed = Endpoint::parse(&e).map_err(|m| format!("endpoint {m}"))?;
                if parsed.path != "/" {
                    return Err(format!("endpoint {e:?}: expected scheme://host[:port]"));
                }
                (parsed.https, parsed.authority, true)
            }
            None => (true, format!("s3.{region}.amazonaws.com"), false),
        };
        let credentials =
            credential_source(url, &var, &setting, &other_profile, &region, &profile)?;
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

/// Reads the settings of a named profile (a `source_profile`) from the AWS files.
type ProfileReader<'a> = dyn Fn(&str) -> Result<HashMap<String, String>, String> + 'a;

/// The first link of the credential chain the environment and profile set up (see
/// [`super::credentials`] for the order).
fn credential_source(
    url: &str,
    var: &dyn Fn(&str) -> Option<String>,
    setting: &dyn Fn(&[&str], &str) -> Option<String>,
    other_profile: &ProfileReader,
    region: &str,
    profile: &str,
) -> Result<Source, String> {
    let access_key_id = setting(&["AWS_ACCESS_KEY_ID"], "aws_access_key_id");
    let secret = setting(&["AWS_SECRET_ACCESS_KEY"], "aws_secret_access_key");
    if let (Some(access_key_id), Some(secret)) = (access_key_id, secret) {
        return Ok(Source::Static(Credentials {
            access_key_id,
            secret_access_key: Zeroizing::new(secret),
            session_token: setting(&["AWS_SESSION_TOKEN"], "aws_session_token"),
        }));
    }
    // The profile's command, before a web identity from the environment (as the SDKs do).
    if let Some(command) = setting(&[], "credential_process") {
        return Ok(Source::Process(command));
    }
    let role_arn = setting(&["AWS_ROLE_ARN"], "role_arn");
    let token_file = setting(&["AWS_WEB_IDENTITY_TOKEN_FILE"], "web_identity_token_file");
    let sts = || -> Result<Endpoint, String> {
        match setting(
            &["AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"],
            "endpoint_url",
        ) {
            Some(e) => Endpoint::parse(&e).map_err(|m| format!("STS endpoint {m}")),
            None => Ok(Endpoint {
                https: true,
                authority: format!("sts.{region}.amazonaws.com"),
                path: "/".into(),
            }),
        }
    };
    let session_name = || {
        setting(&["AWS_ROLE_SESSION_NAME"], "role_session_name")
            .unwrap_or_else(|| "uplink-server".into())
    };
    match (role_arn, token_file, setting(&[], "source_profile")) {
        (Some(role_arn), Some(token_file), _) => {
            return Ok(Source::WebIdentity {
                role_arn,
                token_file: PathBuf::from(token_file),
                session_name: session_name(),
                sts: sts()?,
            });
        }
        (Some(role_arn), None, Some(source)) => {
            let keys = other_profile(&source)?;
            let (Some(id), Some(secret)) = (
                keys.get("aws_access_key_id"),
                keys.get("aws_secret_access_key"),
            ) else {
                return Err(format!(
                    "--store {url}: profile {profile:?} assumes role {role_arn} with the keys \
                     of source_profile {source:?}, which has none (aws_access_key_id and \
                     aws_secret_access_key in ~/.aws/credentials)"
                ));
            };
            return Ok(Source::AssumeRole {
                role_arn,
                session_name: session_name(),
                external_id: setting(&[], "external_id"),
                source: Credentials {
                    access_key_id: id.clone(),
                    secret_access_key: Zeroizing::new(secret.clone()),
                    session_token: keys.get("aws_session_token").cloned(),
                },
                sts: sts()?,
                region: region.to_string(),
            });
        }
        (Some(role_arn), None, None) => {
            return Err(format!(
                "--store {url}: profile {profile:?} assumes role {role_arn} with neither a web \
                 identity token file nor a source_profile whose keys assume it: set \
                 AWS_WEB_IDENTITY_TOKEN_FILE or source_profile"
            ));
        }
        _ => {}
    }
    let container = match (
        var("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
    ) {
        (Some(full), _) => Some(full),
        (None, Some(rel)) => Some(format!("http://169.254.170.2{rel}")),
        (None, None) => None,
    };
    if let Some(c) = container {
        let endpoint =
            Endpoint::parse(&c).map_err(|m| format!("AWS_CONTAINER_CREDENTIALS_*_URI {m}"))?;
        let token = match (
            var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        ) {
            (Some(f), _) => Some(ContainerToken::File(PathBuf::from(f))),
            (None, Some(v)) => Some(ContainerToken::Value(v)),
            (None, None) => None,
        };
        return Ok(Source::Container { endpoint, token });
    }
    if var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(format!(
            "--store {url}: no S3 credentials (set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, profile {profile:?} in ~/.aws/credentials, its \
             credential_process, AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE, or a \
             container endpoint; \
             the instance metadata service is off by AWS_EC2_METADATA_DISABLED)"
        ));
    }
    let imds =
        var("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| "http://169.254.169.254".into());
    let endpoint =
        Endpoint::parse(&imds).map_err(|m| format!("AWS_EC2_METADATA_SERVICE_ENDPOINT {m}"))?;
    Ok(Source::Imds { endpoint })
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
        let long = "p".repeat(MAX_PREFIX);
        assert!(parse_url(&format!("s3://bucket1/{long}")).is_ok());
        let err = parse_url(&format!("s3://bucket1/{long}x")).unwrap_err();
        assert!(err.contains("1024-byte keys"), "{err}");
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
        assert_eq!(key_id(&c), "FILEKEY");
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
        assert_eq!(key_id(&c), "OTHER");
        assert_eq!(
            (c.https, c.authority.as_str(), c.path_style),
            (false, "127.0.0.1:9000", true)
        );
        let c = Config::from_env(
            "s3://bucket1",
            &env(&[("AWS_ACCESS_KEY_ID", "ENV"), ("AWS_SECRET_ACCESS_KEY", "s")]),
        )
        .unwrap();
        assert_eq!((key_id(&c), c.region.as_str()), ("ENV", "us-east-1"));
    }

    fn key_id(c: &Config) -> &str {
        match &c.credentials {
            Source::Static(k) => &k.access_key_id,
            other => panic!("expected static keys, got {other:?}"),
        }
    }

    #[test]
    fn without_keys_a_web_identity_then_a_container_then_the_instance_role() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            "[profile pod]\nrole_arn = arn:aws:iam::1:role/from-file\n\
             web_identity_token_file = /var/run/token\n\
             [profile broken]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = default\n",
        )
        .unwrap();
        let config = config.to_str().unwrap();
        let source = |pairs: &[(&str, &str)]| Config::from_env("s3://bucket1", &env(pairs));

        let c = source(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/ingest"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/tok"),
            ("AWS_REGION", "eu-west-1"),
        ])
        .unwrap();
        let Source::WebIdentity {
            role_arn,
            token_file,
            session_name,
            sts,
        } = c.credentials
        else {
            panic!("expected a web identity");
        };
        assert_eq!(
            (
                role_arn.as_str(),
                token_file.to_str(),
                session_name.as_str()
            ),
            ("arn:aws:iam::1:role/ingest", Some("/tok"), "uplink-server")
        );
        assert_eq!(
            (sts.https, sts.authority.as_str()),
            (true, "sts.eu-west-1.amazonaws.com")
        );
        let c = source(&[("AWS_CONFIG_FILE", config), ("AWS_PROFILE", "pod")]).unwrap();
        assert!(
            matches!(&c.credentials, Source::WebIdentity { role_arn, .. } if role_arn.ends_with("from-file"))
        );
        let broken = source(&[("AWS_CONFIG_FILE", config), ("AWS_PROFILE", "broken")]);
        assert!(broken.err().unwrap().contains("source_profile"));
        // Static keys come first, whatever else is set.
        let c = source(&[
            ("AWS_ACCESS_KEY_ID", "K"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/ingest"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/tok"),
        ])
        .unwrap();
        assert_eq!(key_id(&c), "K");

        let c = source(&[
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/x",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/t"),
        ])
        .unwrap();
        let Source::Container { endpoint, token } = c.credentials else {
            panic!("expected the container endpoint");
        };
        assert_eq!(endpoint.authority, "169.254.170.2");
        assert_eq!(endpoint.path, "/v2/credentials/x");
        assert_eq!(token, Some(ContainerToken::File("/t".into())));

        let c = source(&[]).unwrap();
        assert!(
            matches!(&c.credentials, Source::Imds { endpoint } if endpoint.authority == "169.254.169.254")
        );
        let missing = source(&[("AWS_EC2_METADATA_DISABLED", "true")])
            .err()
            .unwrap();
        assert!(missing.contains("no S3 credentials"), "{missing}");
    }

    #[test]
    fn a_role_is_assumed_with_the_keys_of_its_source_profile() {
        let dir = tempfile::tempdir().unwrap();
        let (config, creds) = (dir.path().join("config"), dir.path().join("credentials"));
        std::fs::write(
            &config,
            "[profile ingest]\nrole_arn = arn:aws:iam::1:role/ingest\n\
             source_profile = base\nexternal_id = fleet-7\nrole_session_name = node-a\n",
        )
        .unwrap();
        std::fs::write(
            &creds,
            "[base]\naws_access_key_id = BASEKEY\naws_secret_access_key = basesecret\n",
        )
        .unwrap();
        let c = Config::from_env(
            "s3://bucket1",
            &env(&[
                ("AWS_CONFIG_FILE", config.to_str().unwrap()),
                ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
                ("AWS_PROFILE", "ingest"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ]),
        )
        .unwrap();
        let Source::AssumeRole {
            role_arn,
            session_name,
            external_id,
            source,
            sts,
            region,
        } = c.credentials
        else {
            panic!("expected a role to assume, got {:?}", c.credentials);
        };
        assert_eq!(
            (
                role_arn.as_str(),
                session_name.as_str(),
                external_id.as_deref()
            ),
            ("arn:aws:iam::1:role/ingest", "node-a", Some("fleet-7"))
        );
        assert_eq!(
            (
                source.access_key_id.as_str(),
                source.secret_access_key.as_str()
            ),
            ("BASEKEY", "basesecret")
        );
        assert_eq!(
            (sts.authority.as_str(), region.as_str()),
            ("127.0.0.1:5000", "us-east-1")
        );
    }
}
