//! A real S3-compatible server for the object-store backend's tests: moto (installed by
//! `scripts/test` into `.deps/venv`) on a loopback port, with IAM auth on so every request
//! must carry a valid SigV4 signature, and boto3 (the operator's view) to read what it holds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::interop::{interop_file, interop_python};

/// A running moto S3 server with one bucket and the credentials of a user allowed to use it.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    /// Over https: the CA that signed the endpoint's certificate.
    pub ca: Option<PathBuf>,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// A role allowed `s3:*` that a web identity may assume (through moto's STS).
    pub role_arn: String,
}

impl S3Server {
    pub fn start(dir: &Path, bucket: &str) -> S3Server {
        Self::start_with(dir, bucket, false, Ipv4Addr::LOCALHOST.into())
    }

    /// On the IPv6 loopback address (`http://[::1]:port`).
    pub fn start_v6(dir: &Path, bucket: &str) -> S3Server {
        Self::start_with(dir, bucket, false, Ipv6Addr::LOCALHOST.into())
    }

    /// Over https, with a certificate for 127.0.0.1 from a CA of its own (made with
    /// `openssl`, as an operator would); [`Self::ca`] names the CA.
    pub fn start_tls(dir: &Path, bucket: &str) -> S3Server {
        Self::start_with(dir, bucket, true, Ipv4Addr::LOCALHOST.into())
    }

    fn start_with(dir: &Path, bucket: &str, tls: bool, ip: IpAddr) -> S3Server {
        let python = interop_python();
        let moto = python.with_file_name("moto_server");
        assert!(
            moto.is_file(),
            "{} is missing: run scripts/test",
            moto.display()
        );
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.join("moto.log")).expect("moto log");
        let mut cmd = Command::new(&moto);
        cmd.args(["-H", &ip.to_string(), "-p", &port.to_string()]);
        let ca = tls.then(|| {
            let (ca, cert, key) = make_certificate(dir);
            cmd.arg("-c").arg(cert).arg("-k").arg(key);
            ca
        });
        let child = cmd
            // The first five requests (the IAM setup) go unauthenticated; then SigV4 is
            // checked on every request.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "5")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start moto_server");
        let scheme = if tls { "https" } else { "http" };
        let mut server = S3Server {
            child,
            endpoint: format!("{scheme}://{}", SocketAddr::new(ip, port)),
            ca,
            bucket: bucket.to_string(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            role_arn: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((ip, port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = server.admin(&["setup", &server.endpoint.clone(), bucket]);
        let keys: serde_json::Value = serde_json::from_str(&out).expect("setup output");
        server.access_key_id = keys["access_key_id"].as_str().expect("key id").into();
        server.secret_access_key = keys["secret_access_key"].as_str().expect("secret").into();
        server.role_arn = keys["role_arn"].as_str().expect("role arn").into();
        server
    }

    fn admin(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(interop_python());
        if let Some(ca) = &self.ca {
            cmd.env("AWS_CA_BUNDLE", ca);
        }
        let out = cmd
            .arg(interop_file("s3_admin.py"))
            .args(args)
            .output()
            .expect("run s3_admin.py");
        assert!(
            out.status.success(),
            "s3_admin.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn with_keys(&self, cmd: &str, rest: &[&str]) -> String {
        let mut args = vec![
            cmd,
            &self.endpoint,
            &self.access_key_id,
            &self.secret_access_key,
            &self.bucket,
        ];
        args.extend_from_slice(rest);
        self.admin(&args)
    }

    /// Lets the next `n` requests through without a signature, as AWS's STS takes
    /// `AssumeRoleWithWebIdentity`; every other request stays checked.
    pub fn allow_unsigned(&self, n: u32) {
        self.admin(&["unsigned", &self.endpoint, &n.to_string()]);
    }

    /// SHA-256 (hex) and size of the object at `key`, `None` if there is none.
    pub fn object_sha(&self, key: &str) -> Option<(String, u64)> {
        let out = self.with_keys("sha", &[key]);
        let (sha, size) = out.split_once(' ')?;
        Some((sha.to_string(), size.parse().expect("size")))
    }

    /// SHA-256 (hex) and size of every object under `prefix`, by key (one boto3 run).
    pub fn object_shas(&self, prefix: &str) -> std::collections::HashMap<String, (String, u64)> {
        let out = self.with_keys("shas", &[prefix]);
        out.lines()
            .filter_map(|l| {
                let mut it = l.split(' ');
                let (key, sha, size) = (it.next()?, it.next()?, it.next()?.parse().ok()?);
                Some((key.to_string(), (sha.to_string(), size)))
            })
            .collect()
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.with_keys("list", &[prefix]);
        out.lines().map(str::to_string).collect()
    }

    /// Stores `text` at `key` (as another node, or an operator, would).
    pub fn put_text(&self, key: &str, text: &str) {
        self.with_keys("put", &[key, text]);
    }

    /// Stores `text` (or, as `@path`, that file's bytes) at `key` with one user metadata
    /// entry (`x-amz-meta-NAME`).
    pub fn put_text_with_metadata(&self, key: &str, text: &str, name: &str, value: &str) {
        self.with_keys("put", &[key, text, &format!("{name}={value}")]);
    }

    /// Starts a multipart upload of `key` with one part and leaves it open, as a complete
    /// whose node died does.
    pub fn begin_multipart(&self, key: &str) {
        self.with_keys("begin", &[key]);
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_multipart_uploads(&self) -> Vec<String> {
        let out = self.with_keys("uploads", &[]);
        out.lines().map(str::to_string).collect()
    }

    /// The environment `uplink-server --store` reads, as an operator would set it.
    pub fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", self.access_key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.as_str()),
            ("AWS_REGION", "us-east-1"),
        ]
    }
}

/// A CA and a certificate it signed for 127.0.0.1: (ca.pem, cert.pem, key.pem) in `dir`.
fn make_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let d = dir.join("s3-tls");
    std::fs::create_dir_all(&d).expect("tls dir");
    let p = |f: &str| d.join(f);
    std::fs::write(p("leaf.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext file");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: [Vec<&str>; 3] = [
        [
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
        [
            &["req"][..],
            &ec,
            &["-keyout", "key.pem", "-out", "leaf.csr"],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-extfile",
            "leaf.ext",
        ],
    ];
    for (i, step) in steps.iter().enumerate() {
        let subject = ["/CN=s3 test CA", "/CN=127.0.0.1", ""][i];
        let mut cmd = Command::new("openssl");
        cmd.current_dir(&d).args(step).args(["-days", "2"]);
        if !subject.is_empty() {
            cmd.args(["-subj", subject]);
        }
        let out = cmd.output().expect("run openssl");
        assert!(out.status.success(), "openssl {step:?}: {out:?}");
    }
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
