//! Two paths: taking path 1's link down moves new connections to path 2 at once; the flow
//! that was running on path 1 stalls and resumes when path 1 comes back.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{ms, up, wait_until};
use netsim::probe::{TcpSink, TcpSource};
use netsim::{DirSel, Impair, PathSel, SimOpts, addr};

/// The source address the client would use towards the service address right now.
fn route_source(sim: &netsim::Sim) -> std::net::IpAddr {
    sim.in_client(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect(SocketAddr::new(addr::SERVICE_V4.into(), 9))?;
        s.local_addr()
    })
    .unwrap()
    .unwrap()
    .ip()
}

#[test]
fn handover_from_path1_to_path2() {
    // "Wi-Fi" 10 ms one way, "cellular" 30 ms one way.
    let sim = up(
        "nt-path",
        SimOpts::symmetric(Impair::default().delay(ms(10))).path2(Impair::default().delay(ms(30))),
    );
    let sink = TcpSink::start(&sim, addr::SERVICE_V4.into(), 0).unwrap();
    let svc = sink.addr();

    // A running flow to the service address goes over path 1.
    let flow1 =
        TcpSource::start(&sim, svc, Duration::from_secs(3), Duration::from_secs(60)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || sink.conn_bytes(0) > 1_000_000));
    let p2_before = sim.stats(PathSel::P2, DirSel::Up).tx_packets;
    assert!(sim.stats(PathSel::P1, DirSel::Up).tx_packets > 500);

    // The client loses path 1.
    sim.set_link(PathSel::P1, false).unwrap();
    let t_down = Instant::now();
    // A new connection works over path 2 at once: connect takes one path-2 RTT (60 ms).
    let flow2 = TcpSource::start(&sim, svc, Duration::from_secs(2), Duration::from_secs(60))
        .expect("new connection over path 2");
    assert!(
        flow2.connect_time() < ms(1000),
        "connect over path 2 took {:?}",
        flow2.connect_time()
    );
    assert!(
        wait_until(Duration::from_secs(3), || sink.conn_bytes(1) > 200_000),
        "no data over path 2"
    );
    eprintln!(
        "path 2 carried data {:?} after path 1 went down",
        t_down.elapsed()
    );
    assert!(sim.stats(PathSel::P2, DirSel::Up).tx_packets > p2_before + 100);
    // The client's routes moved: the source address of a new socket is path 2's.
    assert_eq!(
        route_source(&sim),
        std::net::IpAddr::from(addr::CLIENT_V4[1])
    );

    // The old flow (bound to path 1's address) makes no progress while path 1 is down.
    std::thread::sleep(ms(200));
    let stalled = sink.conn_bytes(0);
    std::thread::sleep(ms(1000));
    assert_eq!(
        sink.conn_bytes(0),
        stalled,
        "flow 1 moved bytes with path 1 down"
    );

    // Path 1 comes back: routes return, the stalled flow resumes, new connections prefer it.
    sim.set_link(PathSel::P1, true).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || sink.conn_bytes(0)
            > stalled + 500_000),
        "flow 1 did not resume after path 1 came back"
    );
    assert_eq!(
        route_source(&sim),
        std::net::IpAddr::from(addr::CLIENT_V4[0])
    );
    let p1_before = sim.stats(PathSel::P1, DirSel::Up).tx_packets;
    let flow3 = TcpSource::start(&sim, svc, Duration::from_secs(2), ms(100)).unwrap();
    assert!(sim.stats(PathSel::P1, DirSel::Up).tx_packets > p1_before);
    drop((flow1, flow2, flow3));
}

#[test]
fn per_path_addresses_and_ipv6() {
    let sim = up("nt-addr", SimOpts::default());
    for (i, s6) in addr::SERVER_V6.iter().enumerate() {
        for ip in [std::net::IpAddr::from(addr::SERVER_V4[i]), (*s6).into()] {
            let sink = TcpSink::start(&sim, ip, 0).unwrap();
            let src = TcpSource::start(
                &sim,
                sink.addr(),
                Duration::from_secs(2),
                Duration::from_secs(5),
            )
            .unwrap();
            assert!(
                wait_until(Duration::from_secs(3), || sink.total() > 100_000),
                "{ip}"
            );
            drop(src);
        }
    }
    let sink = TcpSink::start(&sim, addr::SERVICE_V6.into(), 0).unwrap();
    let src = TcpSource::start(
        &sim,
        sink.addr(),
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(3), || sink.total() > 100_000));
    drop(src);
    // Path 2 only is taken down: IPv6 service traffic still goes over path 1.
    sim.set_link(PathSel::P2, false).unwrap();
    let src = TcpSource::start(
        &sim,
        sink.addr(),
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(3), || sink.conn_bytes(1) > 100_000));
    drop(src);
    // Both down: nothing connects.
    sim.set_link(PathSel::P1, false).unwrap();
    assert!(TcpSource::start(&sim, sink.addr(), ms(300), ms(100)).is_err());
    sim.set_link(PathSel::All, true).unwrap();
    assert!(TcpSource::start(&sim, sink.addr(), Duration::from_secs(2), ms(100)).is_ok());
}
