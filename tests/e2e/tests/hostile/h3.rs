//! HTTP/3 stream abuse against the server, in frames written by hand over raw QUIC
//! (quinn): garbage, absurd lengths, frames where they may not stand, a second control
//! stream; and what must keep working next to it.

use std::sync::Arc;
use std::time::Duration;

use uplink_e2e::*;
use uplink_proto::wire;

use super::{Got, Tally, Want};

/// A raw QUIC connection with ALPN h3 to the server: HTTP/3 frames written by hand.
async fn raw(server: &Server) -> Result<quinn::Connection, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls =
        uplinkd::transport::tls::client_config(Some(&server.ca), &[wire::ALPN_H3]).expect("tls");
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from((*tls).clone()).expect("quic");
    let config = quinn::ClientConfig::new(Arc::new(quic));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint
        .connect_with(
            config,
            server.addr.parse().expect("server addr"),
            "localhost",
        )
        .expect("connect")
        .await
        .map_err(|e| e.to_string())
}

/// `bytes` on a new request stream of `conn`, finished; what came back within 10 s.
async fn stream(conn: &quinn::Connection, bytes: &[u8]) -> Got {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(64 * 1024)).await;
    match answer {
        Err(_) => Ok((0, "no answer and no reset in 10 s".into())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(data)) if data.is_empty() => Err("stream finished empty".into()),
        // An answer starts with a HEADERS frame (type 0x01).
        Ok(Ok(data)) => Ok((
            0,
            format!("answered {} bytes, first {:#04x}", data.len(), data[0]),
        )),
    }
}

/// `bytes` on a request stream of a fresh connection.
async fn on_fresh_connection(server: &Server, bytes: &[u8]) -> Got {
    let conn = raw(server).await?;
    let got = stream(&conn, bytes).await;
    conn.close(0u32.into(), b"done");
    got
}

/// `GET /v1/ping` as one HTTP/3 HEADERS frame, QPACK with the static table only (RFC
/// 9204 appendix A): `:method GET` (index 17), `:scheme https` (23), and `:authority`
/// (0) and `:path` (1) with literal values.
fn ping_headers() -> Vec<u8> {
    let mut fields = vec![0x00, 0x00, 0xc0 | 17, 0xc0 | 23];
    for (name_index, value) in [(0u8, "localhost"), (1, wire::PATH_PING)] {
        fields.push(0x50 | name_index);
        fields.push(value.len() as u8);
        fields.extend_from_slice(value.as_bytes());
    }
    let mut frame = vec![0x01, fields.len() as u8];
    frame.extend_from_slice(&fields);
    frame
}

/// A unidirectional stream of `kind` carrying `bytes`, left open.
async fn uni(
    conn: &quinn::Connection,
    kind: u8,
    bytes: &[u8],
) -> Result<quinn::SendStream, String> {
    let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
    send.write_all(&[kind]).await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    Ok(send)
}

/// The HTTP/3 cases, each on its own connection; what must be refused goes to `t`.
pub async fn abuse(server: &Server, t: &mut Tally) {
    for (case, bytes) in [
        (
            "h3: garbage on a request stream",
            &b"\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        ),
        (
            "h3: a HEADERS frame of 1 GiB announced",
            &b"\x01\x80\x40\x00\x00"[..],
        ),
    ] {
        let got = on_fresh_connection(server, bytes).await;
        t.check(case, got, Want::Reset);
    }

    // The hand-made request itself is answered: the cases below differ from it by the abuse.
    let ping = on_fresh_connection(server, &ping_headers()).await;
    assert!(
        matches!(&ping, Ok((0, a)) if a.ends_with("0x01")),
        "a plain HTTP/3 ping: {ping:?}"
    );

    let data_first = [&[0x00, 0x03][..], b"abc", &ping_headers()].concat();
    let got = on_fresh_connection(server, &data_first).await;
    t.check("h3: a DATA frame before HEADERS", got, Want::Reset);

    let settings_on_request = [&[0x04, 0x00][..], &ping_headers()].concat();
    let got = on_fresh_connection(server, &settings_on_request).await;
    t.check("h3: a SETTINGS frame on a request stream", got, Want::Reset);

    // Two control streams: a connection error; no request goes through after it.
    let got = async {
        let conn = raw(server).await?;
        let _c1 = uni(&conn, 0x00, &[0x04, 0x00]).await?;
        let _c2 = uni(&conn, 0x00, &[0x04, 0x00]).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = stream(&conn, &ping_headers()).await;
        conn.close(0u32.into(), b"done");
        got
    }
    .await;
    t.check("h3: a second control stream", got, Want::Reset);

    // A unidirectional stream of a type nobody defined must be ignored (RFC 9114 §6.2.3):
    // a request on the same connection is answered.
    let got = async {
        let conn = raw(server).await?;
        let _ctrl = uni(&conn, 0x00, &[0x04, 0x00]).await?;
        let _grease = uni(&conn, 0x21, b"ignore me").await?;
        let got = stream(&conn, &ping_headers()).await;
        conn.close(0u32.into(), b"done");
        got
    }
    .await;
    assert!(
        matches!(&got, Ok((0, a)) if a.ends_with("0x01")),
        "a request after an unknown stream type: {got:?}"
    );
    // A push stream opened by a client is a connection error by RFC 9114 §6.2.2; the h3
    // crate (0.0.8) ignores it instead. Not counted as refused: what must hold is that it
    // stores nothing and the server goes on.
    let _ = async {
        let conn = raw(server).await?;
        let _push = uni(&conn, 0x01, &[0x00]).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = stream(&conn, &ping_headers()).await;
        conn.close(0u32.into(), b"done");
        got
    }
    .await;
    let after = on_fresh_connection(server, &ping_headers()).await;
    assert!(
        matches!(&after, Ok((0, a)) if a.ends_with("0x01")),
        "the server after the HTTP/3 abuse: {after:?}"
    );
}
