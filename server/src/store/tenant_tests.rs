//! Tenants, conditional create and quotas, read like the rules they check.
use super::*;
use uplink_proto::integrity;
use uplink_proto::wire::CreateUpload;

fn req(name: &str, size: u64, overwrite: bool) -> CreateUpload {
    CreateUpload {
        size,
        deferred_length: false,
        name: name.into(),
        metadata: Default::default(),
        overwrite,
    }
}

/// Creates, stores `data` as one chunk and completes: the object `name` of `tenant`.
fn upload(
    st: &Store,
    tenant: &str,
    name: &str,
    data: &[u8],
    overwrite: bool,
) -> Result<(), ApiError> {
    let c = st.create(tenant, None, &req(name, data.len() as u64, overwrite))?;
    let s = st.get(tenant, &c.upload_id)?;
    finish(st, &s, data)
}

fn finish(st: &Store, s: &Arc<Session>, data: &[u8]) -> Result<(), ApiError> {
    let d = integrity::digest(data);
    if let BeginChunk::Reserved(r) = s.begin_chunk(0, data.len() as u64, &d.sha256, false)? {
        s.store_chunk(r, &[bytes::Bytes::copy_from_slice(data)], &d, None)?;
    }
    let root = uplink_proto::merkle::root_of([(0, data.len() as u64, &d.sha256)])
        .map_err(|e| ApiError::new(500, code::INTERNAL, e.to_string()))?;
    s.complete(st, &hex::encode(root), None).map(|_| ())
}

#[test]
fn another_tenants_upload_does_not_exist_for_you() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Store::open(tmp.path(), true).unwrap();
    let c = st
        .create("alice", Some("job-1"), &req("a.bin", 4, false))
        .unwrap();
    assert_eq!(
        st.get("bob", &c.upload_id).err().map(|e| e.status),
        Some(404)
    );
    assert_eq!(st.delete("bob", &c.upload_id).unwrap_err().status, 404);
    assert!(
        st.get("alice", &c.upload_id).is_ok(),
        "bob's delete removed nothing"
    );
    // Idempotency keys are per tenant: bob's "job-1" is a session of his own.
    let b = st
        .create("bob", Some("job-1"), &req("a.bin", 4, false))
        .unwrap();
    assert_ne!(b.upload_id, c.upload_id);
}

#[test]
fn each_tenant_has_its_own_names() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Store::open(tmp.path(), true).unwrap();
    upload(&st, "alice", "scan.ply", b"alice's", false).unwrap();
    upload(&st, "bob", "scan.ply", b"bob's", false).unwrap();
    assert_eq!(
        std::fs::read(st.object_path("alice", "scan.ply")).unwrap(),
        b"alice's"
    );
    assert_eq!(
        std::fs::read(st.object_path("bob", "scan.ply")).unwrap(),
        b"bob's"
    );
    assert_eq!(st.object_path("bob", "x"), tmp.path().join("objects/bob/x"));
}

#[test]
fn an_object_is_replaced_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Store::open(tmp.path(), false).unwrap();
    let t = crate::clients::DEFAULT_TENANT;
    upload(&st, t, "f.bin", b"first", false).unwrap();
    let e = st.create(t, None, &req("f.bin", 6, false)).unwrap_err();
    assert_eq!((e.status, e.code), (409, code::OBJECT_EXISTS));
    upload(&st, t, "f.bin", b"second", true).unwrap();
    assert_eq!(
        std::fs::read(st.object_path(t, "f.bin")).unwrap(),
        b"second"
    );
}

#[test]
fn of_two_uploads_racing_for_a_name_the_first_complete_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Store::open(tmp.path(), false).unwrap();
    let t = crate::clients::DEFAULT_TENANT;
    let a = st.create(t, None, &req("f.bin", 3, false)).unwrap();
    let b = st.create(t, None, &req("f.bin", 3, false)).unwrap();
    let (a, b) = (
        st.get(t, &a.upload_id).unwrap(),
        st.get(t, &b.upload_id).unwrap(),
    );
    finish(&st, &b, b"bbb").unwrap();
    let e = finish(&st, &a, b"aaa").unwrap_err();
    assert_eq!((e.status, e.code), (409, code::OBJECT_EXISTS));
    assert_eq!(std::fs::read(st.object_path(t, "f.bin")).unwrap(), b"bbb");
    // The loser is not completed: nothing claims it was stored.
    assert!(a.state().completed.is_none());
}

#[test]
fn quotas_count_open_uploads_and_stored_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Store::open(tmp.path(), true).unwrap().with_quota(Quota {
        bytes: Some(100),
        sessions: Some(2),
    });
    upload(&st, "alice", "a", &[1; 60], false).unwrap();
    let e = st.create("alice", None, &req("b", 41, false)).unwrap_err();
    assert_eq!((e.status, e.code), (413, code::QUOTA_EXCEEDED));
    st.create("alice", None, &req("b", 20, false)).unwrap();
    st.create("alice", None, &req("c", 20, false)).unwrap();
    let e = st.create("alice", None, &req("d", 1, false)).unwrap_err();
    assert_eq!((e.status, e.code), (429, code::TOO_MANY_SESSIONS));
    assert!(
        e.retry_after.is_some(),
        "a full session quota frees up: retry later"
    );
    // Bob's quota is his own.
    upload(&st, "bob", "a", &[2; 90], false).unwrap();
    // An overwrite is counted at create as if both were kept: the old one is still there.
    upload(&st, "bob", "a", &[3; 95], true).unwrap_err(); // 90 stored + 95 open > 100
    upload(&st, "bob", "z", &[3; 10], false).unwrap();
    let e = st.create("bob", None, &req("y", 1, false)).unwrap_err();
    assert_eq!(e.code, code::QUOTA_EXCEEDED);
}
