//! The daemon's socket, called by stock gRPC clients that are not ours, with their default
//! channel options: Python's grpcio (gRPC C-core, as C++, Ruby, PHP and Objective-C apps use)
//! with code generated from `proto/` alone, and Node's @grpc/grpc-js. Each checks health,
//! enqueues a file and follows Watch to the completed upload.

use std::process::Command;

use uplink_e2e::*;

/// What a client script printed, after checking it succeeded.
fn run_client(mut cmd: Command, what: &str) -> serde_json::Value {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn check_upload(report: &serde_json::Value, server: &Server, file: &std::path::Path) {
    assert_eq!(report["health"]["daemon"], "SERVING", "{report}");
    assert_eq!(report["health"]["uplink.v1.Uplink"], "SERVING", "{report}");
    assert_eq!(report["state"], "JOB_STATE_COMPLETED", "{report}");
    let want = sha256_file(file);
    assert_eq!(report["server_sha256"], want.as_str(), "{report}");
    let name = file.file_name().unwrap().to_str().unwrap();
    assert_eq!(sha256_file(&server.object(name)), want, "the stored object");
    let events: Vec<&str> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert_eq!(
        events.last(),
        Some(&"completed"),
        "Watch followed to the end: {events:?}"
    );
}

#[test]
fn python_grpcio_with_code_generated_from_proto() {
    let dir = workdir();
    let d = dir.path();
    let server = Server::start(d);
    let daemon = Daemon::start(d, &server);
    let file = d.join("capture-py.bin");
    random_file(&file, 9 << 20);

    // Generate the client as an app author would: grpcio-tools over proto/ alone.
    let gen_dir = d.join("generated");
    std::fs::create_dir_all(&gen_dir).unwrap();
    let python = interop_python();
    let proto = proto_dir();
    let status = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", gen_dir.display()))
        .arg(format!("--grpc_python_out={}", gen_dir.display()))
        .args(["uplink.proto", "health.proto"])
        .status()
        .expect("grpc_tools.protoc");
    assert!(status.success(), "code generation from proto/ failed");

    let mut cmd = Command::new(&python);
    cmd.arg(interop_file("grpc_client.py"))
        .arg(&gen_dir)
        .arg(&daemon.socket)
        .arg(&file);
    let report = run_client(cmd, "grpc_client.py");
    check_upload(&report, &server, &file);
}

#[test]
fn node_grpc_js_with_proto_loader() {
    let dir = workdir();
    let d = dir.path();
    let server = Server::start(d);
    let daemon = Daemon::start(d, &server);
    let file = d.join("capture-node.bin");
    random_file(&file, 9 << 20);

    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", interop_node_modules())
        .arg(interop_file("grpc_client.js"))
        .arg(proto_dir())
        .arg(&daemon.socket)
        .arg(&file);
    let report = run_client(cmd, "grpc_client.js");
    check_upload(&report, &server, &file);
}
