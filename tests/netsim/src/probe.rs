//! Small traffic generators for tests and `netsim bench`: a UDP echo + pinger, a TCP sink +
//! source, and a UDP blaster. All of them only talk to addresses inside the sim's namespaces,
//! and every loop is bounded in time.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::Sim;

/// Hard cap on how long any helper thread lives.
const MAX_LIFETIME: Duration = Duration::from_secs(600);

/// A UDP echo server in the server namespace; stops when dropped.
pub struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Bind `ip:port` (port 0 = any) in the server namespace and echo every datagram.
    pub fn start(sim: &Sim, ip: IpAddr, port: u16) -> Result<UdpEcho> {
        let sock = sim.in_server(|| UdpSocket::bind((ip, port)))??;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut buf = [0u8; 2048];
            while !s2.load(Ordering::Relaxed) && t0.elapsed() < MAX_LIFETIME {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Ok(UdpEcho {
            addr,
            stop,
            handle: Some(handle),
        })
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends numbered UDP pings from the client namespace and times the echoes.
pub struct UdpPinger {
    sock: UdpSocket,
    seq: u64,
}

impl UdpPinger {
    pub fn new(sim: &Sim, target: SocketAddr) -> Result<UdpPinger> {
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let sock = sim.in_client(|| UdpSocket::bind(bind))??;
        sock.connect(target)?;
        Ok(UdpPinger { sock, seq: 0 })
    }

    /// One ping; `None` if no echo within `timeout`.
    pub fn ping(&mut self, timeout: Duration) -> Option<Duration> {
        self.seq += 1;
        let t0 = Instant::now();
        self.sock.send(&self.seq.to_be_bytes()).ok()?;
        let mut buf = [0u8; 64];
        loop {
            let left = timeout.checked_sub(t0.elapsed())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_micros(100))))
                .ok()?;
            match self.sock.recv(&mut buf) {
                Ok(8) if buf[..8] == self.seq.to_be_bytes() => return Some(t0.elapsed()),
                Ok(_) => continue, // a late echo of an earlier ping
                Err(_) => return None,
            }
        }
    }

    /// `n` pings, `gap` apart; the RTTs of those answered.
    pub fn pings(&mut self, n: usize, gap: Duration, timeout: Duration) -> Vec<Duration> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            if let Some(rtt) = self.ping(timeout) {
                v.push(rtt);
            }
            std::thread::sleep(gap);
        }
        v
    }
}

/// Median of a sample (None if empty).
pub fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// Median of f64 samples (None if empty).
pub fn median_f64(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// A TCP server in the server namespace that accepts connections and counts received bytes,
/// per connection and in total. Stops when dropped.
pub struct TcpSink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
    handle: Option<JoinHandle<()>>,
}

impl TcpSink {
    pub fn start(sim: &Sim, ip: IpAddr, port: u16) -> Result<TcpSink> {
        let listener = sim.in_server(|| TcpListener::bind((ip, port)))??;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<Arc<AtomicU64>>>> = Arc::new(Mutex::new(Vec::new()));
        let (s2, t2, c2) = (stop.clone(), total.clone(), conns.clone());
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut readers = Vec::new();
            while !s2.load(Ordering::Relaxed) && t0.elapsed() < MAX_LIFETIME {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                        let mine = Arc::new(AtomicU64::new(0));
                        if let Ok(mut g) = c2.lock() {
                            g.push(mine.clone());
                        }
                        let (s3, t3) = (s2.clone(), t2.clone());
                        readers.push(std::thread::spawn(move || {
                            let mut buf = vec![0u8; 256 * 1024];
                            while !s3.load(Ordering::Relaxed) && t0.elapsed() < MAX_LIFETIME {
                                match conn.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        mine.fetch_add(n as u64, Ordering::Relaxed);
                                        t3.fetch_add(n as u64, Ordering::Relaxed);
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            ErrorKind::WouldBlock
                                                | ErrorKind::TimedOut
                                                | ErrorKind::Interrupted
                                        ) => {}
                                    Err(_) => break,
                                }
                            }
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for r in readers {
                let _ = r.join();
            }
        });
        Ok(TcpSink {
            addr,
            stop,
            total,
            conns,
            handle: Some(handle),
        })
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Bytes received over all connections.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
    /// Bytes received on the `i`-th accepted connection (0 if it does not exist yet).
    pub fn conn_bytes(&self, i: usize) -> u64 {
        self.conns
            .lock()
            .ok()
            .and_then(|g| g.get(i).map(|c| c.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }
    pub fn conn_count(&self) -> usize {
        self.conns.lock().map(|g| g.len()).unwrap_or(0)
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP sender in the client namespace that writes as fast as it can until stopped (drop) or
/// `max` elapses.
pub struct TcpSource {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
    connect_time: Duration,
}

impl TcpSource {
    /// Connect (with `connect_timeout`) from the client namespace, optionally from a given
    /// local address, and start sending.
    pub fn start(
        sim: &Sim,
        to: SocketAddr,
        connect_timeout: Duration,
        max: Duration,
    ) -> Result<TcpSource> {
        let t0 = Instant::now();
        let mut conn = sim
            .in_client(|| TcpStream::connect_timeout(&to, connect_timeout))?
            .with_context(|| format!("connect {to}"))?;
        let connect_time = t0.elapsed();
        conn.set_write_timeout(Some(Duration::from_millis(100)))?;
        let _ = conn.set_nodelay(true);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s2, n2) = (stop.clone(), sent.clone());
        let handle = std::thread::spawn(move || {
            let buf = vec![0x5au8; 128 * 1024];
            let t0 = Instant::now();
            while !s2.load(Ordering::Relaxed) && t0.elapsed() < max.min(MAX_LIFETIME) {
                match conn.write(&buf) {
                    Ok(n) => {
                        n2.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = conn.shutdown(std::net::Shutdown::Both);
        });
        Ok(TcpSource {
            stop,
            sent,
            handle: Some(handle),
            connect_time,
        })
    }
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    pub fn connect_time(&self) -> Duration {
        self.connect_time
    }
}

impl Drop for TcpSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Bulk TCP from client to `to` (a [`TcpSink`]); returns the receiver's goodput in bit/s over
/// `measure` after `warmup`.
pub fn tcp_goodput(
    sim: &Sim,
    sink: &TcpSink,
    to: SocketAddr,
    warmup: Duration,
    measure: Duration,
) -> Result<f64> {
    let src = TcpSource::start(sim, to, Duration::from_secs(5), warmup + measure * 2)?;
    std::thread::sleep(warmup);
    let (b0, t0) = (sink.total(), Instant::now());
    std::thread::sleep(measure);
    let (b1, t1) = (sink.total(), Instant::now());
    drop(src);
    Ok((b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64())
}

/// Result of [`udp_blast`].
#[derive(Clone, Copy, Debug)]
pub struct Blast {
    pub sent: u64,
    pub received: u64,
    /// From the first to the last packet received.
    pub recv_secs: f64,
}

/// Send UDP datagrams of `payload` bytes from the client namespace to `to` (in the server
/// namespace, where a counter is bound): `count` packets, in bursts of `burst` with `gap`
/// between bursts (gap 0 = as fast as possible), stopping early after `max`. Waits up to
/// `linger` after the last send for stragglers.
#[allow(clippy::too_many_arguments)]
pub fn udp_blast(
    sim: &Sim,
    to: SocketAddr,
    count: u64,
    payload: usize,
    burst: u64,
    gap: Duration,
    max: Duration,
    linger: Duration,
) -> Result<Blast> {
    let rx = sim.in_server(|| UdpSocket::bind(to))??;
    rx.set_read_timeout(Some(Duration::from_millis(50)))?;
    set_rcvbuf(&rx, 8 << 20);
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let tx = sim.in_client(|| UdpSocket::bind(bind))??;
    tx.connect(to)?;
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut got = 0u64;
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        let mut done_at: Option<Instant> = None;
        let t0 = Instant::now();
        while t0.elapsed() < MAX_LIFETIME {
            if rx.recv(&mut buf).is_ok() {
                got += 1;
                last = Instant::now();
                first.get_or_insert(last);
            }
            if d2.load(Ordering::Relaxed) {
                let at = *done_at.get_or_insert_with(Instant::now);
                if at.elapsed() >= linger {
                    break;
                }
            }
        }
        let secs = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
        (got, secs)
    });
    let buf = vec![0xa5u8; payload];
    let t0 = Instant::now();
    let mut sent = 0u64;
    'outer: while sent < count {
        for _ in 0..burst.max(1) {
            if sent >= count || t0.elapsed() > max {
                break 'outer;
            }
            if tx.send(&buf).is_ok() {
                sent += 1;
            }
        }
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    done.store(true, Ordering::Relaxed);
    let (received, recv_secs) = receiver
        .join()
        .map_err(|_| anyhow!("receiver thread panicked"))?;
    Ok(Blast {
        sent,
        received,
        recv_secs,
    })
}

fn set_rcvbuf(sock: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid c_int on our stack;
    // the fd belongs to `sock`, which is alive for the call.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
