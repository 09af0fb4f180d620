//! The forwarder's ceiling with no impairment: bulk TCP goodput and small-packet UDP rate.
//! Prints the figures (see README.md); asserts behaviour only, not speed. Runs alone
//! (`threads-required` in .config/nextest.toml) so that it neither disturbs nor is disturbed by
//! the accuracy tests.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{ms, up};
use netsim::probe::{TcpSink, median_f64, tcp_goodput, udp_blast};
use netsim::{DirSel, PathSel, SimOpts, addr};

#[test]
fn ceiling() {
    let sim = up("nt-ceil", SimOpts::default());
    let to = SocketAddr::new(addr::SERVER_V4[0].into(), 5001);
    let sink = TcpSink::start(&sim, to.ip(), to.port()).unwrap();
    let mut tcp = Vec::new();
    for _ in 0..3 {
        tcp.push(tcp_goodput(&sim, &sink, to, ms(500), ms(2000)).unwrap());
    }
    drop(sink);
    let b = udp_blast(
        &sim,
        SocketAddr::new(addr::SERVER_V4[0].into(), 5002),
        u64::MAX,
        18,
        256,
        Duration::ZERO,
        Duration::from_secs(2),
        ms(300),
    )
    .unwrap();
    let pps = b.received as f64 / b.recv_secs.max(1e-9);
    let st = sim.stats(PathSel::P1, DirSel::Both);
    eprintln!(
        "netsim ceiling: TCP goodput samples {:?} Mbit/s (median {:.0}); UDP 46-byte packets: \
         sent {} delivered {} = {:.0} packets/s; stats {st:?}",
        tcp.iter().map(|b| (b / 1e6).round()).collect::<Vec<_>>(),
        median_f64(&tcp).unwrap() / 1e6,
        b.sent,
        b.received,
        pps
    );
    assert!(tcp.iter().all(|&b| b > 0.0));
    assert!(b.received > 0);
    assert_eq!(st.drop_pool, 0, "buffer pool overflowed without impairment");
}
