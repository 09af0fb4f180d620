//! The rewriter, fed the bytes a stock gRPC client sends: the server side must see the same
//! frames and headers, with an `:authority` it can parse.

use super::*;
use loona_hpack::Encoder;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let l = (payload.len() as u32).to_be_bytes();
    let mut f = vec![l[1], l[2], l[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Splits the rewriter's output into frames: (kind, flags, stream, payload).
fn frames(mut out: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while !out.is_empty() {
        let len = u32::from_be_bytes([0, out[0], out[1], out[2]]) as usize;
        let stream = u32::from_be_bytes([out[5], out[6], out[7], out[8]]);
        v.push((out[3], out[4], stream, out[9..9 + len].to_vec()));
        out = &out[9 + len..];
    }
    v
}

/// Decodes the header blocks of `frames` as the server would, with one decoder for the
/// connection.
fn server_headers(fs: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(String, String)>> {
    let mut dec = Decoder::new();
    let mut blocks = Vec::new();
    let mut block = Vec::new();
    for (kind, flags, _, payload) in fs {
        match *kind {
            HEADERS => {
                let skip = if flags & PRIORITY != 0 { 5 } else { 0 };
                assert_eq!(flags & PADDED, 0, "the front never pads");
                block.extend_from_slice(&payload[skip..]);
            }
            CONTINUATION => block.extend_from_slice(payload),
            _ => continue,
        }
        if flags & END_HEADERS != 0 {
            let hs = dec
                .decode(&block)
                .expect("the server decodes what the front sent");
            blocks.push(
                hs.into_iter()
                    .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                    .collect(),
            );
            block.clear();
        }
    }
    blocks
}

fn request(authority: &str, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

fn encode(enc: &mut Encoder<'_>, hs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    enc.encode(hs.iter().map(|(n, v)| (&n[..], &v[..])))
}

fn authority(block: &[(String, String)]) -> &str {
    &block.iter().find(|(n, _)| n == ":authority").unwrap().1
}

#[test]
fn a_socket_path_authority_becomes_localhost_and_nothing_else_changes() {
    let mut enc = Encoder::new();
    let hs = request("tmp%2Fgx%2Fd.sock", "/uplink.v1.Uplink/Status");
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    input.extend(frame(HEADERS, END_HEADERS, 1, &encode(&mut enc, &hs)));
    input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA: an empty message
    let mut rw = Rewriter::default();
    rw.feed(&input).unwrap();
    let out = rw.output().split().to_vec();
    assert_eq!(&out[..24], PREFACE, "the preface passes as it is");
    let fs = frames(&out[24..]);
    assert_eq!(fs.len(), 3);
    assert_eq!((fs[0].0, fs[0].3.len()), (0x4, 0), "SETTINGS untouched");
    assert_eq!(
        fs[2],
        (0x0, END_STREAM, 1, b"\0\0\0\0\0".to_vec()),
        "DATA untouched"
    );
    let blocks = server_headers(&fs);
    assert_eq!(authority(&blocks[0]), "localhost");
    let others: Vec<_> = blocks[0]
        .iter()
        .filter(|(n, _)| n != ":authority")
        .cloned()
        .collect();
    let want: Vec<_> = request("x", "/uplink.v1.Uplink/Status")
        .into_iter()
        .filter(|(n, _)| n != b":authority")
        .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
        .collect();
    assert_eq!(others, want, "every other header, in order");
}

#[test]
fn a_valid_authority_is_kept() {
    let mut enc = Encoder::new();
    let hs = request("localhost:50051", "/grpc.health.v1.Health/Check");
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &encode(&mut enc, &hs),
    ));
    let mut rw = Rewriter::default();
    rw.feed(&input).unwrap();
    let out = rw.output().split().to_vec();
    let fs = frames(&out[24..]);
    assert_eq!(fs[0].1, END_HEADERS | END_STREAM, "END_STREAM is kept");
    assert_eq!(authority(&server_headers(&fs)[0]), "localhost:50051");
}

#[test]
fn the_dynamic_table_stays_in_step_across_requests() {
    // The client's encoder indexes headers in the first block and refers to them by index
    // in the next; the server must still see the full headers of both.
    let mut enc = Encoder::new();
    let mut input = PREFACE.to_vec();
    for (i, path) in ["/a/One", "/a/Two", "/a/One"].iter().enumerate() {
        let hs = request("tmp%2Fx.sock", path);
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1 + 2 * i as u32,
            &encode(&mut enc, &hs),
        ));
    }
    let mut rw = Rewriter::default();
    rw.feed(&input).unwrap();
    let out = rw.output().split().to_vec();
    let blocks = server_headers(&frames(&out[24..]));
    let paths: Vec<_> = blocks
        .iter()
        .map(|b| b.iter().find(|(n, _)| n == ":path").unwrap().1.clone())
        .collect();
    assert_eq!(paths, ["/a/One", "/a/Two", "/a/One"]);
    assert!(blocks.iter().all(|b| authority(b) == "localhost"));
}

#[test]
fn padding_priority_and_continuations_are_handled() {
    let mut enc = Encoder::new();
    let mut hs = request("tmp%2Fx.sock", "/p/Q");
    // A header large enough that the literal re-encoding needs CONTINUATION frames.
    hs.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
    let block = encode(&mut enc, &hs);
    let (a, b) = block.split_at(100);
    let mut first = vec![3u8]; // pad length
    first.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive dependency on 0, weight 15
    first.extend_from_slice(a);
    first.extend_from_slice(&[0, 0, 0]); // padding
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, PADDED | PRIORITY, 7, &first));
    input.extend(frame(CONTINUATION, END_HEADERS, 7, b));
    let mut rw = Rewriter::default();
    // Byte by byte: frame boundaries fall anywhere in the reads.
    for byte in &input {
        rw.feed(std::slice::from_ref(byte)).unwrap();
    }
    let out = rw.output().split().to_vec();
    let fs = frames(&out[24..]);
    assert!(
        fs.len() >= 3,
        "re-encoded block spans HEADERS + CONTINUATIONs"
    );
    assert_eq!(fs[0].0, HEADERS);
    assert_eq!(fs[0].1 & PRIORITY, PRIORITY);
    assert_eq!(&fs[0].3[..5], &[0x80, 0, 0, 0, 15], "priority kept");
    assert!(fs.iter().all(|f| f.3.len() <= MAX_OUT_FRAME && f.2 == 7));
    assert!(fs[1..].iter().all(|f| f.0 == CONTINUATION));
    assert_eq!(fs.last().unwrap().1, END_HEADERS);
    let blocks = server_headers(&fs);
    assert_eq!(authority(&blocks[0]), "localhost");
    assert_eq!(
        blocks[0]
            .iter()
            .find(|(n, _)| n == "x-big")
            .unwrap()
            .1
            .len(),
        40_000
    );
}

#[test]
fn malformed_input_is_refused_not_passed_on() {
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ));
    assert!(Rewriter::default().feed(&input).is_err(), "bad HPACK");

    let mut input = PREFACE.to_vec();
    input.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x82]));
    assert!(
        Rewriter::default().feed(&input).is_err(),
        "stray CONTINUATION"
    );

    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, 0, 1, &[0x82]));
    input.extend(frame(0x0, 0, 1, b"x"));
    assert!(
        Rewriter::default().feed(&input).is_err(),
        "a header block interrupted by DATA"
    );

    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82]));
    assert!(
        Rewriter::default().feed(&input).is_err(),
        "padding past the end"
    );
}
