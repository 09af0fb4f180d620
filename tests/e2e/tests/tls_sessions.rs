//! TLS session lifetime (`uplink-server --tls-session-lifetime`, the seed's 3600 s
//! rotation): a client resumes within the lifetime — over TCP (a resumed handshake) and
//! over QUIC (0-RTT data accepted) — and past it gets a full handshake, its early data
//! refused: the server erased the secret it would resume from.

use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, HandshakeKind};
use uplink_e2e::*;
use uplink_proto::wire;

/// The lifetime these tests give the server, and how long they wait to pass it.
const LIFETIME_SECS: &str = "4";
const PAST_LIFETIME: Duration = Duration::from_secs(6);

fn client_tls(server: &Server, alpn: &[u8]) -> Arc<ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One config per test: its session store is the client's memory of tickets.
    uplinkd::transport::tls::client_config(Some(&server.ca), &[alpn]).expect("client TLS")
}

/// One TLS connection over TCP: the handshake, then one read, which takes in the session
/// tickets the server sends after it. Returns how the handshake went.
fn tcp_handshake(server: &Server, config: &Arc<ClientConfig>) -> HandshakeKind {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::clone(config), name).expect("client");
    let tcp = TcpStream::connect(&server.addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake");
    }
    // The server's HTTP/2 SETTINGS follow the tickets; either way the read ends.
    let _ = stream.read(&mut [0u8; 256]);
    stream.conn.handshake_kind().expect("handshake done")
}

#[test]
fn over_tcp_a_session_resumes_within_its_lifetime_and_not_after() {
    let dir = workdir();
    let server = Server::start_opts(dir.path(), None, &["--tls-session-lifetime", LIFETIME_SECS]);
    let config = client_tls(&server, wire::ALPN_H2);
    assert_eq!(tcp_handshake(&server, &config), HandshakeKind::Full);
    assert_eq!(
        tcp_handshake(&server, &config),
        HandshakeKind::Resumed,
        "a ticket within its lifetime resumes"
    );
    std::thread::sleep(PAST_LIFETIME);
    assert_eq!(
        tcp_handshake(&server, &config),
        HandshakeKind::Full,
        "a ticket past its lifetime must not resume"
    );
}

/// One QUIC connection: whether it went out with 0-RTT data and the server took it.
/// Waits for the tickets before closing.
async fn quic_early_data_accepted(
    endpoint: &quinn::Endpoint,
    server: &Server,
    config: &quinn::ClientConfig,
) -> bool {
    let addr = server.addr.parse().expect("server addr");
    let connecting = endpoint
        .connect_with(config.clone(), addr, "localhost")
        .expect("connect");
    let (conn, accepted) = match connecting.into_0rtt() {
        Ok((conn, zero_rtt)) => {
            let accepted = zero_rtt.await;
            (conn, accepted)
        }
        Err(connecting) => (connecting.await.expect("QUIC handshake"), false),
    };
    // The tickets come after the handshake; give them a moment to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.close(0u32.into(), b"done");
    accepted
}

#[tokio::test]
async fn over_quic_early_data_is_accepted_within_the_lifetime_and_refused_after() {
    let dir = workdir();
    let server = Server::start_opts(dir.path(), None, &["--tls-session-lifetime", LIFETIME_SECS]);
    let mut tls = (*client_tls(&server, wire::ALPN_H3)).clone();
    tls.enable_early_data = true;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
    let config = quinn::ClientConfig::new(Arc::new(quic));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");

    assert!(
        !quic_early_data_accepted(&endpoint, &server, &config).await,
        "no ticket yet: a full handshake"
    );
    assert!(
        quic_early_data_accepted(&endpoint, &server, &config).await,
        "a fresh ticket carries 0-RTT data"
    );
    tokio::time::sleep(PAST_LIFETIME).await;
    assert!(
        !quic_early_data_accepted(&endpoint, &server, &config).await,
        "0-RTT data under a ticket past its lifetime must be refused"
    );
    endpoint.wait_idle().await;
}
