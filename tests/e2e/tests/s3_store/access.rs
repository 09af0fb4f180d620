//! How a node reaches the store and proves who it is: the endpoint (https with a CA
//! bundle, IPv6), refusals at start, and every link of the AWS credential chain a fleet
//! uses (web identity, instance and container roles, credential_process, a role assumed
//! with a source profile's keys).

use uplink_e2e::*;

use super::{BUCKET, MIB, STORE, node};

/// Runs `uplink-server --store store` with the store's settings and `env` over them, to
/// its exit (it must not start): its stderr.
fn refused_at_start(
    dir: &std::path::Path,
    s3: &S3Server,
    store: &str,
    env: &[(&str, &str)],
) -> String {
    let token = dir.join("token");
    write_secret(&token, TOKEN);
    let out = std::process::Command::new(bin("uplink-server"))
        .args(["--listen", "127.0.0.1:0", "--store", store, "--token-file"])
        .arg(&token)
        .arg("--data-dir")
        .arg(dir.join("refused"))
        .envs(s3.env())
        .envs(env.iter().copied())
        .output()
        .expect("run uplink-server");
    assert!(!out.status.success(), "the server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_wrong_secret_or_bucket_stops_the_server_at_start_with_the_stores_answer() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let err = refused_at_start(
        dir.path(),
        &s3,
        STORE,
        &[("AWS_SECRET_ACCESS_KEY", "not-the-secret")],
    );
    assert!(
        err.contains("bucket captures") && err.contains("403"),
        "{err}"
    );
    let err = refused_at_start(dir.path(), &s3, "s3://no-such-bucket/x", &[]);
    assert!(err.contains("NoSuchBucket"), "{err}");
}

#[test]
fn over_https_the_store_is_trusted_through_aws_ca_bundle_and_only_so() {
    let dir = workdir();
    let s3 = S3Server::start_tls(dir.path(), BUCKET);
    let ca = s3.ca.clone().expect("a CA");
    let ca = ca.to_str().expect("utf-8 path");

    // Without the endpoint's CA (the system's roots only) the server does not start.
    let err = refused_at_start(dir.path(), &s3, STORE, &[("AWS_CA_BUNDLE", "")]);
    assert!(err.contains("certificate"), "{err}");

    // With it, uploads go through TLS to the store.
    let mut env = s3.env();
    env.push(("AWS_CA_BUNDLE", ca));
    let server = Server::start_on(
        &dir.path().join("node"),
        "127.0.0.1:0",
        &["--store", STORE],
        &env,
    );
    let device = dir.path().join("device");
    std::fs::create_dir_all(&device).unwrap();
    let daemon = Daemon::start(&device, &server);
    let file = dir.path().join("mesh.bin");
    random_file(&file, 20 * MIB + 3);
    let done = send_wait(&daemon.socket, &file);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["server_sha256"], sha256_file(&file), "{done}");
    assert_eq!(
        s3.object_sha("uplink/objects/mesh.bin"),
        Some((sha256_file(&file), 20 * MIB + 3))
    );
}

/// What a node sees on a host with no keys of its own: no key variables, no AWS files,
/// no instance metadata unless a test points it somewhere.
fn keyless_env<'a>(s3: &'a S3Server, dir: &std::path::Path) -> Vec<(&'a str, String)> {
    let none = dir.join("no-such-aws-file").display().to_string();
    vec![
        ("AWS_ENDPOINT_URL", s3.endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", none.clone()),
        ("AWS_CONFIG_FILE", none),
    ]
}

fn start_keyless(dir: &std::path::Path, env: &[(&str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_on(dir, "127.0.0.1:0", &["--store", STORE], &env)
}

fn upload_through(server: &Server, dir: &std::path::Path, name: &str) -> (String, u64) {
    let device = dir.join(format!("device-{name}"));
    std::fs::create_dir_all(&device).unwrap();
    let daemon = Daemon::start(&device, server);
    let file = dir.join(name);
    random_file(&file, 9 * MIB + 5);
    let done = send_wait(&daemon.socket, &file);
    assert_eq!(done["state"], "completed", "{done}");
    let sha = sha256_file(&file);
    assert_eq!(done["server_sha256"], sha, "{done}");
    (sha, 9 * MIB + 5)
}

#[test]
fn an_endpoint_at_an_ipv6_address_is_reached() {
    let dir = workdir();
    let s3 = S3Server::start_v6(dir.path(), BUCKET);
    assert!(s3.endpoint.starts_with("http://[::1]:"), "{}", s3.endpoint);
    let server = node(&dir.path().join("node"), "127.0.0.1:0", &s3, None, &[]);
    let want = upload_through(&server, dir.path(), "v6.bin");
    assert_eq!(s3.object_sha("uplink/objects/v6.bin"), Some(want));
}

/// A profile whose `credential_process` prints the keys (aws-vault, IAM Roles Anywhere's
/// signing helper): the node runs it, signs with what it printed, runs it again when the
/// keys are due for renewal, and a command that fails stops the node at start with what
/// the command said.
#[test]
fn a_node_whose_profile_names_a_credential_process_signs_with_what_it_prints() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let ran = dir.path().join("process-ran");
    // Keys valid until 2099, or (once `short` exists) for 306 s from each run: then they
    // are due for renewal (5 min before expiry) 6 s after they were fetched.
    let short = dir.path().join("short-lived");
    let script = dir.path().join("vault.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1\" >> {ran}\n\
             exp=2099-01-01T00:00:00Z\n\
             [ -f {short} ] && exp=$(date -u -d '+306 seconds' +%Y-%m-%dT%H:%M:%SZ)\n\
             printf '{{\"Version\": 1, \"AccessKeyId\": \"%s\", \"SecretAccessKey\": \"%s\", \
             \"Expiration\": \"%s\"}}' {id} {secret} \"$exp\"\n",
            ran = ran.display(),
            short = short.display(),
            id = s3.access_key_id,
            secret = s3.secret_access_key,
        ),
    )
    .unwrap();
    chmod(&script, 0o700);
    let config = dir.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile capture]\ncredential_process = {} capture-profile\n",
            script.display()
        ),
    )
    .unwrap();
    let mut env = keyless_env(&s3, dir.path());
    env.retain(|(k, _)| *k != "AWS_CONFIG_FILE");
    env.push(("AWS_CONFIG_FILE", config.display().to_string()));
    env.push(("AWS_PROFILE", "capture".into()));
    let server = start_keyless(&dir.path().join("node"), &env);
    let log = std::fs::read_to_string(&server.proc.log).unwrap_or_default();
    assert!(
        log.contains("credential_process"),
        "the log names the source: {log}"
    );
    let want = upload_through(&server, dir.path(), "vault.bin");
    assert_eq!(s3.object_sha("uplink/objects/vault.bin"), Some(want));
    let runs = std::fs::read_to_string(&ran).unwrap();
    assert!(runs.lines().all(|l| l == "capture-profile"), "{runs}");
    assert_eq!(
        runs.lines().count(),
        1,
        "keys valid until 2099 are fetched once"
    );
    drop(server);

    // Short-lived keys are fetched again once due, and the uploads go on.
    std::fs::write(&short, "").unwrap();
    let server = start_keyless(&dir.path().join("node-short"), &env);
    std::thread::sleep(std::time::Duration::from_secs(7));
    let want = upload_through(&server, dir.path(), "renewed.bin");
    assert_eq!(s3.object_sha("uplink/objects/renewed.bin"), Some(want));
    let runs = std::fs::read_to_string(&ran).unwrap().lines().count();
    assert!(runs >= 3, "{runs} runs: short-lived keys were not renewed");
    drop(server);

    // A command that fails: the node does not start, and says why.
    std::fs::write(
        &config,
        "[profile capture]\ncredential_process = sh -c 'echo session expired, run vault login >&2; exit 2'\n",
    )
    .unwrap();
    // (s3.env()'s keys, which refused_at_start also sets, blanked: they would come first.)
    env.extend([
        ("AWS_ACCESS_KEY_ID", String::new()),
        ("AWS_SECRET_ACCESS_KEY", String::new()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let said = refused_at_start(dir.path(), &s3, STORE, &env);
    assert!(said.contains("session expired, run vault login"), "{said}");
}

/// A profile that assumes a role with another profile's keys (`role_arn` +
/// `source_profile`, as in a multi-account setup): the node asks STS with a signed
/// `AssumeRole` and signs every S3 request with the role's temporary keys.
#[test]
fn a_node_assumes_its_role_with_the_keys_of_its_source_profile() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let (config, creds) = (
        dir.path().join("aws-config"),
        dir.path().join("aws-credentials"),
    );
    std::fs::write(
        &config,
        format!(
            "[profile ingest]\nrole_arn = {}\nsource_profile = base\n\
             role_session_name = node-a\n",
            s3.role_arn
        ),
    )
    .unwrap();
    std::fs::write(
        &creds,
        format!(
            "[base]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key_id, s3.secret_access_key
        ),
    )
    .unwrap();
    chmod(&creds, 0o600);
    let mut env = keyless_env(&s3, dir.path());
    env.retain(|(k, _)| !k.ends_with("_FILE"));
    env.extend([
        ("AWS_CONFIG_FILE", config.display().to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
        ("AWS_PROFILE", "ingest".into()),
    ]);
    let server = start_keyless(&dir.path().join("node"), &env);
    let log = std::fs::read_to_string(&server.proc.log).unwrap_or_default();
    assert!(
        log.contains(&format!("role {} assumed", s3.role_arn)),
        "the log names the source: {log}"
    );
    let want = upload_through(&server, dir.path(), "assumed.bin");
    assert_eq!(s3.object_sha("uplink/objects/assumed.bin"), Some(want));
}

#[test]
fn a_node_with_a_web_identity_token_signs_with_the_role_sts_gives_it() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let token = dir.path().join("sa-token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.service-account.sig\n").unwrap();
    let mut env = keyless_env(&s3, dir.path());
    env.extend([
        ("AWS_ROLE_ARN", s3.role_arn.clone()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.display().to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]);

    // The token file missing: the server says so and does not start.
    let missing: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| match *k {
            "AWS_WEB_IDENTITY_TOKEN_FILE" => (*k, "/no/such/token"),
            _ => (*k, v.as_str()),
        })
        .chain([("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")])
        .collect();
    let err = refused_at_start(dir.path(), &s3, STORE, &missing);
    assert!(err.contains("/no/such/token"), "{err}");

    // STS's exchange is the one unsigned request (as in AWS); every S3 request after it
    // is checked by moto against the role's temporary key and session token, so the
    // upload only lands if the node signed with what STS gave it.
    s3.allow_unsigned(1);
    let server = start_keyless(&dir.path().join("node"), &env);
    let want = upload_through(&server, dir.path(), "pod.bin");
    assert_eq!(s3.object_sha("uplink/objects/pod.bin"), Some(want));
    let log = std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default();
    assert!(log.contains("POST / HTTP/1.1\" 200"), "no STS call: {log}");
}

#[test]
fn a_node_on_an_instance_or_in_a_container_fetches_its_role_keys() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    // moto's instance metadata hands out fixed keys it does not know as IAM keys:
    // signatures go unchecked from here, so this test shows where the keys come from
    // (the node has no others and would not start), not that S3 accepts them.
    s3.allow_unsigned(1_000_000_000);

    // EC2: IMDSv2, a session token first, then the role's keys.
    let mut env = keyless_env(&s3, dir.path());
    env.push(("AWS_EC2_METADATA_SERVICE_ENDPOINT", s3.endpoint.clone()));
    let ec2 = start_keyless(&dir.path().join("ec2"), &env);
    let want = upload_through(&ec2, dir.path(), "ec2.bin");
    assert_eq!(s3.object_sha("uplink/objects/ec2.bin"), Some(want));
    let log = std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default();
    let token_at = log.find("PUT /latest/api/token HTTP/1.1\" 200");
    let keys_at =
        log.find("GET /latest/meta-data/iam/security-credentials/default-role HTTP/1.1\" 200");
    assert!(
        token_at.is_some() && keys_at.is_some() && token_at < keys_at,
        "IMDSv2 not used as it must be: {log}"
    );
    drop(ec2);

    // ECS / EKS Pod Identity: the container endpoint, with its authorization token
    // (moto's credentials document stands in for the agent's; the format is the same).
    let auth = dir.path().join("pod-identity-token");
    std::fs::write(&auth, "pod-token\n").unwrap();
    let mut env = keyless_env(&s3, dir.path());
    env.extend([
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!(
                "{}/latest/meta-data/iam/security-credentials/default-role",
                s3.endpoint
            ),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            auth.display().to_string(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]);
    let ecs = start_keyless(&dir.path().join("ecs"), &env);
    let want = upload_through(&ecs, dir.path(), "ecs.bin");
    assert_eq!(s3.object_sha("uplink/objects/ecs.bin"), Some(want));

    // Nothing at all, instance metadata off: a clear refusal naming what to set.
    let mut env = keyless_env(&s3, dir.path());
    env.extend([
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_ACCESS_KEY_ID", String::new()),
        ("AWS_SECRET_ACCESS_KEY", String::new()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let err = refused_at_start(dir.path(), &s3, STORE, &env);
    assert!(
        err.contains("no S3 credentials") && err.contains("AWS_WEB_IDENTITY_TOKEN_FILE"),
        "{err}"
    );
}
