//! The server's bounds, each with its clear, retryable answer: a body that goes silent is
//! answered 408 `body_timeout` and frees what it held; chunk bodies held in memory are
//! capped (503 `busy` with Retry-After, before any body byte is read); connections past
//! the limit get 503 `too_many_connections` (HTTP/2) or are refused (QUIC); connections
//! that carry no request are closed. After each, a good upload goes through.
//! The stalled client is an HTTP/2 client (hyper) that sends a little body and then
//! nothing; the over-limit client is `curl`.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use uplink_e2e::*;
use uplink_proto::wire::{self, CreateUpload};
use uplinkd::server_api::{ChunkPayload, SessionKeys, chunk_headers};

const MIB: u64 = 1 << 20;

fn payload(offset: u64, len: u64, seed: u64) -> ChunkPayload {
    let mut data = vec![0u8; len as usize];
    let mut x = 0x5851_F42D_4C95_7F2D ^ seed;
    fill_random(&mut data, &mut x);
    chunk_payload(offset, data)
}

/// A chunk PUT over HTTP/2 that sends the headers and 64 KiB of body, then nothing (the
/// stream stays open): a client that stalls. Returns the server's answer (status, body).
async fn stalled_put(server: &Server, keys: &SessionKeys, chunk: &ChunkPayload) -> (u16, String) {
    use http_body_util::BodyExt;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls =
        uplinkd::transport::tls::client_config(Some(&server.ca), &[wire::ALPN_H2]).expect("tls");
    let tcp = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let mut req = http::Request::put(format!(
        "{}{}",
        server.url(),
        wire::chunk_path(&keys.upload_id, chunk.offset)
    ))
    .header("authorization", format!("Bearer {}", server.bearer()));
    for (name, value) in chunk_headers(keys, chunk) {
        req = req.header(name, value);
    }
    let req = req.body(body).expect("request");
    let answer = sender.send_request(req);
    tx.send_data(chunk.data.slice(..64 * 1024))
        .await
        .expect("first bytes");
    // `tx` stays alive and silent: the stream is open, nothing more comes.
    let resp = tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("the server answers a stalled body within 20 s")
        .expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
    drop(tx);
    (
        status,
        String::from_utf8_lossy(&body.unwrap_or_default()).into_owned(),
    )
}

async fn session(c: &uplinkd::server_api::ServerClient, name: &str, size: u64) -> SessionKeys {
    let created = c
        .create(
            name,
            &CreateUpload {
                deferred_length: false,
                size,
                name: name.into(),
                metadata: Default::default(),
                overwrite: false,
            },
        )
        .await
        .expect("create");
    c.session_keys(&created.upload_id, &created.nonce)
        .expect("keys")
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_memory_held_for_bodies_is_capped() {
    let dir = workdir();
    let cap = (8 * MIB).to_string();
    let server = Server::start_opts(
        dir.path(),
        None,
        &["--body-timeout", "2", "--max-buffered-bytes", &cap],
    );
    let c = server_client(&server);
    let keys = session(&c, "slow.bin", 12 * MIB).await;
    let first = payload(0, 6 * MIB, 1);
    let second = payload(6 * MIB, 6 * MIB, 2);

    // The stalled PUT holds 6 of the server's 8 MiB: another 6 MiB chunk is told to come
    // back (503 busy + Retry-After) before it sends a byte of body. Until the stalled
    // request is in, probes (each its own session) may pass; the attempts are bounded.
    // A probe still being hashed may hold the budget just when the stalled request comes
    // in, which is then itself told to come back: that round is run again (at most 3).
    let mut outcome = None;
    for round in 0..3 {
        let probes = async {
            for n in 0..50 {
                let probe_keys = session(&c, &format!("probe-{round}-{n}.bin"), 6 * MIB).await;
                let probe = payload(0, 6 * MIB, 100 + n);
                if let Err(uplinkd::server_api::CallError::Server {
                    status: 503,
                    code,
                    retry_after,
                    ..
                }) = c.put_chunk(&probe_keys, &probe, 0).await
                {
                    return Some((code, retry_after));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        };
        let ((status, body), refused) = tokio::join!(stalled_put(&server, &keys, &first), probes);
        if status != 503 {
            outcome = Some((status, body, refused));
            break;
        }
    }
    let (status, body, refused) = outcome.expect("the stalled request was admitted in 3 rounds");
    let (code, retry_after) = refused.expect("a chunk over the memory cap is refused with 503");
    assert_eq!(code, "busy");
    assert_eq!(retry_after, Some(Duration::from_secs(1)));

    // The stalled body is answered 408 body_timeout (retryable), and lets go of its bytes.
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("body_timeout"), "{body}");
    assert!(
        !c.put_chunk(&keys, &second, 0)
            .await
            .expect("second chunk")
            .duplicate
    );
    assert!(
        !c.put_chunk(&keys, &first, 0)
            .await
            .expect("first chunk")
            .duplicate
    );

    // And a whole upload by the daemon goes through the same server.
    let daemon = Daemon::start(dir.path(), &server);
    upload_intact(dir.path(), &daemon, 20 * MIB);
}

#[test]
fn connections_past_the_limit_are_told_to_come_back() {
    let dir = workdir();
    let server = Server::start_opts(dir.path(), None, &["--max-connections", "8"]);
    // Eight TLS connections held open (HTTP/2 offered, nothing sent): the limit.
    let held: Vec<_> = (0..8).map(|_| tls_connection(&server)).collect();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "-D",
            "-",
        ])
        .arg("--cacert")
        .arg(&server.ca)
        .args(["-H", &format!("Authorization: Bearer {}", server.bearer())])
        .arg(format!("{}/v1/uploads/{}", server.url(), "0".repeat(32)))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n503"), "{text}");
    assert!(text.contains("too_many_connections"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );

    // Once they close, the daemon uploads as usual.
    drop(held);
    let daemon = Daemon::start(dir.path(), &server);
    upload_intact(dir.path(), &daemon, 3 * MIB);
}

#[test]
fn connections_that_carry_no_request_are_closed_and_a_daemon_connects_again() {
    let dir = workdir();
    let server = Server::start_opts(
        dir.path(),
        None,
        // HTTP/2 only, so the daemon's connection is one these limits apply to.
        &["--no-h3", "--header-timeout", "1", "--idle-timeout", "2"],
    );
    // Connected, handshake done, no request: closed after the header timeout.
    let mut silent = tls_connection(&server);
    let closed_after = until_closed(&mut silent);
    assert!(
        closed_after.is_some_and(|t| t >= Duration::from_millis(900)),
        "a connection that never sent a request: closed after {closed_after:?} (header timeout 1 s)"
    );

    // A daemon's prewarmed connection goes idle and is closed; the upload after it opens
    // a new one and completes.
    let daemon = Daemon::start(dir.path(), &server);
    let warm = uplink(&daemon.socket, &["prewarm"]);
    assert!(warm.status.success(), "{warm:?}");
    assert!(
        server_connections(&server) >= 1,
        "prewarm left no connection open"
    );
    let gone = wait_for(Duration::from_secs(10), || {
        (server_connections(&server) == 0).then_some(())
    });
    assert!(
        gone.is_some(),
        "the idle prewarmed connection is still open"
    );
    upload_intact(dir.path(), &daemon, 3 * MIB);
}

#[tokio::test]
async fn quic_connections_past_the_limit_are_refused_until_one_closes() {
    use uplinkd::transport::{Endpoint, h3::H3Client};
    let dir = workdir();
    let server = Server::start_opts(dir.path(), None, &["--max-connections", "2"]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Each its own TLS config: no session ticket shared, so no 0-RTT that would count as
    // connected before the server's answer.
    let client = || {
        let tls = uplinkd::transport::tls::client_config(Some(&server.ca), &[wire::ALPN_H3])
            .expect("tls");
        let endpoint = Endpoint::parse(&server.url()).expect("endpoint");
        H3Client::new(endpoint, &tls).expect("h3 client")
    };
    let (first, second, third) = (client(), client(), client());
    first.warm().await.expect("first QUIC connection");
    second.warm().await.expect("second QUIC connection");
    let refused = third.warm().await;
    let refused = format!("{refused:?}");
    assert!(
        refused.contains("Err") && refused.to_ascii_lowercase().contains("refused"),
        "a third connection past --max-connections 2: {refused}"
    );

    // One closes; its slot comes back once the server has seen the close.
    first.close().await;
    let mut admitted = None;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if client().warm().await.is_ok() {
            admitted = Some(());
            break;
        }
    }
    assert!(
        admitted.is_some(),
        "the slot freed by a closed connection was not given back"
    );
}

#[tokio::test]
async fn a_quic_connection_kept_alive_but_carrying_no_request_is_closed() {
    let dir = workdir();
    let server = Server::start_opts(dir.path(), None, &["--idle-timeout", "2"]);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls =
        uplinkd::transport::tls::client_config(Some(&server.ca), &[wire::ALPN_H3]).expect("tls");
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from((*tls).clone()).expect("quic");
    let mut config = quinn::ClientConfig::new(std::sync::Arc::new(quic));
    // Pings every 200 ms: QUIC's own idle timeout never fires.
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(200)));
    config.transport_config(std::sync::Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let addr = server.addr.parse().expect("server addr");
    let conn = endpoint
        .connect_with(config, addr, "localhost")
        .expect("connect")
        .await
        .expect("QUIC handshake");
    let started = std::time::Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .expect("the server never closed a connection that sent no request");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "closed after {:?}, before the 2 s idle timeout",
        started.elapsed()
    );
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(u64::from(c.error_code), 0x100, "H3_NO_ERROR: {c:?}")
        }
        other => panic!("closed otherwise: {other:?}"),
    }

    // A daemon's prewarmed QUIC connection goes idle and is closed; its upload afterwards
    // connects again and still goes over HTTP/3.
    let daemon = Daemon::start(dir.path(), &server);
    let warm = uplink(&daemon.socket, &["prewarm"]);
    assert!(warm.status.success(), "{warm:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dir = dir.path().to_path_buf();
    let record = tokio::task::spawn_blocking(move || upload_intact(&dir, &daemon, 3 * MIB))
        .await
        .expect("send");
    assert_eq!(record["protocol"], "h3", "{record}");
}

/// After a limit: a fresh file of `size` random bytes goes through `daemon` and the server
/// holds exactly it. Returns the job's final record.
fn upload_intact(dir: &std::path::Path, daemon: &Daemon, size: u64) -> serde_json::Value {
    let file = dir.join(format!("good-{size}.bin"));
    random_file(&file, size);
    let record = send_wait(&daemon.socket, &file);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["server_sha256"], sha256_file(&file).as_str());
    record
}

/// TCP connections established to the server's port (`ss`), its side of each.
fn server_connections(server: &Server) -> usize {
    let port = server.addr.rsplit_once(':').map_or("", |(_, p)| p);
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Reads (and discards) what the server sends until it closes the connection: how long
/// that took, or `None` if it was still open after 15 s.
fn until_closed(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
) -> Option<Duration> {
    use std::io::Read;
    let start = std::time::Instant::now();
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(15) {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            // A reset or a TLS close without close_notify: closed all the same.
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// A TLS 1.3 connection to the server with `h2` offered, handshake done, kept open.
fn tls_connection(server: &Server) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config =
        uplinkd::transport::tls::client_config(Some(&server.ca), &[wire::ALPN_H2]).expect("tls");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client connection");
    let tcp = TcpStream::connect(&server.addr).expect("connect");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake");
    }
    stream
}
