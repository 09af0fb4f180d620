//! HTTP/3 0-RTT as the daemon reports it: "0-rtt" only when the server accepted the early
//! data. The daemon's QUIC client ([`H3Client`]) against the real `uplink-server`, with a
//! TLS session store of its own, so the ticket it resumes with is certain. (In the whole
//! daemon, HTTP/2 connections share that store, so which ticket QUIC gets is a race.)

use std::time::{Duration, Instant};

use bytes::Bytes;
use uplink_e2e::*;
use uplinkd::transport::h3::{H3Client, Handshake};
use uplinkd::transport::{Endpoint, TransportError, WireRequest, WireResponse};

fn h3_client(server: &Server) -> H3Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A fresh config: a session store no other connection writes to.
    let tls =
        uplinkd::transport::tls::client_config(Some(&server.ca), &[]).expect("client TLS config");
    let endpoint = Endpoint::parse(&server.url()).expect("endpoint");
    H3Client::new(endpoint, &tls).expect("QUIC client")
}

async fn ping(h3: &H3Client) -> Result<WireResponse, TransportError> {
    h3.request(&WireRequest {
        method: http::Method::HEAD,
        path: uplink_proto::wire::PATH_PING.into(),
        headers: vec![(
            uplink_proto::wire::HDR_AUTHORIZATION,
            format!("Bearer {TOKEN}"),
        )],
        body: Bytes::new(),
        lane: 0,
        timeout: Duration::from_secs(10),
        progress: None,
    })
    .await
}

/// The handshake once it is known (early data's fate is known when the handshake ends).
async fn settled_handshake(h3: &H3Client) -> Option<Handshake> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(h) = h3.last_handshake() {
            return Some(h);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn early_data_the_server_accepts_is_reported_as_0_rtt() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let h3 = h3_client(&server);
    assert_eq!(h3.last_handshake(), None, "no connection yet");
    // No ticket: a full handshake, which leaves one.
    ping(&h3).await.expect("ping");
    assert_eq!(h3.last_handshake(), Some(Handshake::Full));
    h3.close().await;
    // With that ticket the ping goes out as early data, and the server takes it.
    let answer = ping(&h3).await.expect("ping in early data");
    assert!(answer.status.is_success(), "{answer:?}");
    assert_eq!(settled_handshake(&h3).await, Some(Handshake::ZeroRtt));
}

#[tokio::test]
async fn early_data_the_server_refuses_is_not_reported_as_0_rtt() {
    let dir = workdir();
    let mut server = Server::start(dir.path());
    let h3 = h3_client(&server);
    ping(&h3).await.expect("ping");
    assert_eq!(h3.last_handshake(), Some(Handshake::Full));
    h3.close().await;
    // The restarted server has forgotten its tickets: the client still sends early data
    // under the old one (as above), and the server refuses it. The request may fail with
    // it; what matters here is what the client then reports.
    server.restart_after(Duration::from_millis(100));
    let _ = ping(&h3).await;
    assert_eq!(settled_handshake(&h3).await, Some(Handshake::Full));
}

#[tokio::test]
async fn warm_over_0rtt_is_reported_only_once_the_server_took_the_connection() {
    let dir = workdir();
    let server = Server::start_opts(dir.path(), None, &["--max-connections", "1"]);
    let h3 = h3_client(&server);
    h3.warm()
        .await
        .expect("a first warm: a full handshake, which leaves a ticket");
    assert_eq!(h3.last_handshake(), Some(Handshake::Full));
    tokio::time::sleep(Duration::from_millis(300)).await; // the ticket lands
    h3.close().await;
    // Another client takes the one connection the server allows (once the closed one
    // has left it).
    let other = h3_client(&server);
    let mut taken = false;
    for _ in 0..50 {
        if other.warm().await.is_ok() {
            taken = true;
            break;
        }
        other.reconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        taken,
        "the other client never got the server's one connection"
    );
    // With its ticket the first client's connection is usable at once (0-RTT), and the
    // server refuses it: warm must say so, not report a connection that is not there.
    let got = h3.warm().await;
    assert!(
        got.is_err(),
        "warm reported success against a full server: {got:?}"
    );
    other.close().await;
}
