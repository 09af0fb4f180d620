//! HTTP/2 on a lossy path from a host whose TCP default is CUBIC (stock Linux): the
//! daemon's connections ask for BBR, Status says which congestion control they got, and
//! the upload completes intact. Through netsim at 200 Mbit/s, 50 ms RTT, 1 % loss each
//! way; HTTP/3 is off on the server, so everything goes over TCP.

use std::net::SocketAddr;
use std::time::Duration;

use netsim::{Impair, Sim, SimOpts};
use uplink_e2e::*;

#[test]
fn on_a_lossy_cubic_host_http2_asks_for_bbr_says_so_and_completes() {
    let imp = Impair::default()
        .delay(Duration::from_millis(25))
        .rate_bps(200_000_000)
        .loss(0.01);
    let sim = Sim::up("e2e-cubic", SimOpts::symmetric(imp)).expect("netsim");
    sim.set_client_congctl("cubic")
        .expect("ip route change … congctl cubic");
    let dir = workdir();
    let server = Server::start_opts(dir.path(), Some(&sim), &["--no-h3"]);
    let to: SocketAddr = server
        .addr
        .parse()
        .expect("the server listens on an address");

    // What any other program on this host gets: CUBIC, from the route.
    let plain = sim
        .in_client(|| {
            let s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            rustix::net::sockopt::tcp_congestion(&s).map_err(std::io::Error::from)
        })
        .expect("run in the client namespace")
        .expect("a plain connection");
    assert_eq!(plain, "cubic", "the route's congctl did not apply");

    let daemon = Daemon::start_in(dir.path(), &server, &sim);
    let file = dir.path().join("scan.bin");
    random_file(&file, 24 << 20);
    let record = send_wait(&daemon.socket, &file);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["protocol"], "h2", "{record}");
    assert_eq!(record["server_sha256"], sha256_file(&file).as_str());

    let ep = daemon_status(&daemon.socket)["endpoints"][0].clone();
    assert_eq!(ep["tcp_congestion"], "bbr", "{ep}");
    assert_eq!(ep["tcp_congestion_note"], "", "{ep}");
}
