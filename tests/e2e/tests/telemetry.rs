//! Heat and battery show in Status and change nothing: a device at its critical
//! temperature on a 4 % battery gets the parallelism its link's tier calls for and the
//! full buffer pool, as a calm one on mains does (nothing is throttled for heat or battery).

use uplink_e2e::*;

#[test]
fn a_hot_device_on_a_low_battery_is_reported_and_uploads_like_a_calm_one() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let mut seen = Vec::new();
    for (name, temp_c, battery, on_mains) in [("calm", 41.0, 80, true), ("hot", 97.0, 4, false)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let sys = d.join("sys");
        uplinkd::telemetry::write_fake(&sys, temp_c, 95.0, battery, on_mains).unwrap();
        let mut cmd = Daemon::command(&d, &server);
        cmd.arg("--sysfs-root").arg(&sys);
        let daemon = Daemon::start_cmd(&d, cmd);

        let t = daemon_status(&daemon.socket)["telemetry"].clone();
        let zone = &t["thermal"][0];
        assert_eq!(zone["temp_c"], temp_c, "{t}");
        assert_eq!(
            zone["state"],
            if on_mains { "ok" } else { "critical" },
            "{t}"
        );
        assert_eq!(t["battery"]["percent"], battery, "{t}");
        assert_eq!(
            t["battery"]["level"],
            if on_mains { "normal" } else { "critical" }
        );
        assert_eq!(
            t["power_source"],
            if on_mains { "mains" } else { "battery" }
        );

        let file = d.join(format!("{name}.bin"));
        random_file(&file, 96 << 20);
        let record = send_wait(&daemon.socket, &file);
        assert_eq!(record["state"], "completed", "{record}");
        let status = daemon_status(&daemon.socket);
        // The counting allocator is installed (the bench divides its growth by chunks).
        assert!(
            status["heap_allocations"].as_u64().unwrap_or(0) > 0,
            "{status}"
        );
        let engine = status["engine"].clone();
        seen.push((
            name,
            engine["tier"].clone(),
            engine["stream_limit"].clone(),
            engine["buffers"].clone(),
        ));
    }
    // Each gets what its link calls for — the tier's parallelism (loopback measures
    // "fast" or "ultrafast" depending on the machine's load: 12 streams either way) and
    // the full pool of 15 buffers — on the hot device as on the calm one.
    for (name, tier, streams, buffers) in &seen {
        let tier_streams = match tier.as_str() {
            Some("slow") => 4,
            Some("normal") => 8,
            Some("fast") | Some("ultrafast") => 12,
            _ => panic!("{name}: no tier after an upload: {seen:?}"),
        };
        assert_eq!(streams, tier_streams, "{name}: {seen:?}");
        assert_eq!(buffers, 15, "{name}: {seen:?}");
    }
}
