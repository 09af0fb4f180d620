//! Hostile requests before any chunk: credentials, paths, and create bodies.

use bytes::Bytes;
use uplink_proto::wire;

use super::client::*;
use super::{Fixture, auth, json};

/// Requests with wrong or missing credentials, paths that name nothing or another
/// tenant's upload, and create bodies that are not what the API takes.
pub async fn credentials_paths_and_creates(f: &Fixture, t: &mut Tally) {
    use Want::*;
    let Fixture {
        raw,
        a,
        b,
        s,
        s_path,
        c1_path,
        ..
    } = f;
    // ---- Credentials and paths ----
    let cases: Vec<(&str, Headers, &str, String, Want)> = vec![
        (
            "no credential",
            vec![],
            "GET",
            s_path.clone(),
            Answer(401, "unauthorized"),
        ),
        (
            "Basic instead of Bearer",
            vec![("authorization", b"Basic YWxpY2U6eA==".to_vec())],
            "GET",
            s_path.clone(),
            Answer(401, "unauthorized"),
        ),
        (
            "empty bearer",
            vec![("authorization", b"Bearer ".to_vec())],
            "GET",
            s_path.clone(),
            Answer(401, "unauthorized"),
        ),
        (
            "a 16 KiB bearer",
            vec![(
                "authorization",
                format!("Bearer {}", "A".repeat(16 * 1024)).into_bytes(),
            )],
            "GET",
            s_path.clone(),
            Answer(431, ""),
        ),
        (
            "a bearer that is not UTF-8",
            vec![("authorization", b"Bearer \xff\xfe".to_vec())],
            "GET",
            s_path.clone(),
            Answer(401, "unauthorized"),
        ),
        (
            "bob reads alice's upload",
            auth(b),
            "GET",
            s_path.clone(),
            Answer(404, "unknown_upload"),
        ),
        (
            "bob deletes alice's upload",
            auth(b),
            "DELETE",
            s_path.clone(),
            Answer(404, "unknown_upload"),
        ),
        (
            "bob lists alice's chunks",
            auth(b),
            "GET",
            format!("{s_path}/chunks"),
            Answer(404, "unknown_upload"),
        ),
        (
            "an id that is not hex",
            auth(a),
            "GET",
            "/v1/uploads/zz".into(),
            Answer(404, "not_found"),
        ),
        (
            "an upper-case id",
            auth(a),
            "GET",
            format!("/v1/uploads/{}", s.upload_id.to_uppercase()),
            Answer(404, "not_found"),
        ),
        (
            "an unknown id",
            auth(a),
            "GET",
            format!("/v1/uploads/{}", "0".repeat(32)),
            Answer(404, "unknown_upload"),
        ),
        (
            "an offset with a leading zero",
            auth(a),
            "PUT",
            format!("{s_path}/chunks/0262144"),
            Answer(404, "not_found"),
        ),
        (
            "a negative offset",
            auth(a),
            "PUT",
            format!("{s_path}/chunks/-1"),
            Answer(404, "not_found"),
        ),
        (
            "an offset past u64",
            auth(a),
            "PUT",
            format!("{s_path}/chunks/99999999999999999999999"),
            Answer(404, "not_found"),
        ),
        (
            "a path past the chunk",
            auth(a),
            "PUT",
            format!("{c1_path}/x"),
            Answer(404, "not_found"),
        ),
        (
            "an unknown path",
            auth(a),
            "GET",
            "/v2/uploads".into(),
            Answer(404, "not_found"),
        ),
        (
            "PATCH on uploads",
            auth(a),
            "PATCH",
            wire::PATH_UPLOADS.into(),
            Answer(405, "method_not_allowed"),
        ),
        (
            "DELETE on a chunk",
            auth(a),
            "DELETE",
            c1_path.clone(),
            Answer(405, "method_not_allowed"),
        ),
        (
            "POST on ping",
            vec![],
            "POST",
            wire::PATH_PING.into(),
            Answer(405, "method_not_allowed"),
        ),
        (
            "an object name climbing out",
            auth(a),
            "PUT",
            "/v1/objects/..%2Fetc%2Fpasswd".into(),
            Answer(400, "bad_name"),
        ),
        (
            "a hidden object name",
            auth(a),
            "PUT",
            "/v1/objects/.hidden".into(),
            Answer(400, "bad_name"),
        ),
        (
            "an empty object name",
            auth(a),
            "PUT",
            "/v1/objects/".into(),
            Answer(400, "bad_name"),
        ),
        (
            "a 256-byte object name",
            auth(a),
            "PUT",
            format!("/v1/objects/{}", "n".repeat(256)),
            Answer(400, "bad_name"),
        ),
        (
            "the chunk list with a bad query",
            auth(a),
            "GET",
            format!("{s_path}/chunks?from=abc"),
            Answer(400, "bad_request"),
        ),
        (
            "the chunk list with an unknown key",
            auth(a),
            "GET",
            format!("{s_path}/chunks?drop=1"),
            Answer(400, "bad_request"),
        ),
    ];
    for (case, headers, method, path, want) in cases {
        let got = raw.send(method, &path, &refs(&headers), Bytes::new()).await;
        t.check(case, got, want);
    }

    // ---- Create ----
    let big_meta = format!(
        "{{\"size\":10,\"name\":\"m.bin\",\"metadata\":{{\"k\":\"{}\"}}}}",
        "x".repeat(70 * 1024)
    );
    let creates: Vec<(&str, String, Want)> = vec![
        (
            "create: not JSON",
            "size=10".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: empty body",
            String::new(),
            Answer(400, "bad_request"),
        ),
        (
            "create: truncated JSON",
            "{\"size\":10,\"name\":\"t".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: size is a string",
            "{\"size\":\"ten\",\"name\":\"t.bin\"}".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: negative size",
            "{\"size\":-1,\"name\":\"t.bin\"}".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: size 0",
            "{\"size\":0,\"name\":\"t.bin\"}".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: size past the largest file",
            format!(
                "{{\"size\":{},\"name\":\"t.bin\"}}",
                wire::MAX_FILE_SIZE + 1
            ),
            Answer(400, "bad_request"),
        ),
        (
            "create: size past u64",
            "{\"size\":18446744073709551616,\"name\":\"t.bin\"}".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: a name climbing out",
            "{\"size\":10,\"name\":\"../../etc/passwd\"}".into(),
            Answer(400, "bad_name"),
        ),
        (
            "create: a name with a NUL",
            "{\"size\":10,\"name\":\"a\\u0000b\"}".into(),
            Answer(400, "bad_name"),
        ),
        (
            "create: 70 KiB of metadata",
            big_meta,
            Answer(413, "body_too_large"),
        ),
        (
            "create: JSON nested 10,000 deep",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            Answer(400, "bad_request"),
        ),
    ];
    for (case, body, want) in creates {
        let got = raw
            .send("POST", wire::PATH_UPLOADS, &refs(&json(a)), body)
            .await;
        t.check(case, got, want);
    }
    // The same idempotency key with another body: a replay with altered bytes.
    let mut keyed = json(a);
    keyed.push((wire::HDR_IDEMPOTENCY_KEY, b"hostile-key-1".to_vec()));
    let first = raw
        .send(
            "POST",
            wire::PATH_UPLOADS,
            &refs(&keyed),
            "{\"size\":10,\"name\":\"k.bin\"}",
        )
        .await;
    assert!(matches!(first, Ok((201, _))), "a keyed create: {first:?}");
    let got = raw
        .send(
            "POST",
            wire::PATH_UPLOADS,
            &refs(&keyed),
            "{\"size\":11,\"name\":\"k.bin\"}",
        )
        .await;
    t.check(
        "create: the key again with another size",
        got,
        Answer(409, "idempotency_mismatch"),
    );
}
