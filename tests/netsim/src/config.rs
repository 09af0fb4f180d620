//! Impairment settings and the small text language shared by the CLI, the control socket and
//! the library (`key=value` tokens separated by spaces or commas).

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// Gilbert-Elliott two-state burst loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurstLoss {
    /// Probability (per packet) to go from the good to the bad state.
    pub p_enter: f64,
    /// Probability (per packet) to go from the bad back to the good state.
    pub p_exit: f64,
    /// Loss probability while in the bad state (default 1.0).
    pub loss_bad: f64,
    /// Loss probability while in the good state (default 0.0).
    pub loss_good: f64,
}

impl BurstLoss {
    /// Long-run average loss of this chain.
    pub fn mean_loss(&self) -> f64 {
        let denom = self.p_enter + self.p_exit;
        if denom <= 0.0 {
            return self.loss_good;
        }
        let bad = self.p_enter / denom;
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

/// Size of the bottleneck queue in front of the rate limiter (tail drop when full).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Queue {
    Bytes(u64),
    /// Counted as `n * MTU` bytes.
    Packets(u64),
    /// As much as the link drains in this time at the configured rate.
    Time(Duration),
}

/// Impairments of one direction of one path. `Default` is a perfect link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impair {
    /// One-way delay added to every packet.
    pub delay: Duration,
    /// Uniform jitter: each packet gets `delay ± jitter` (never below 0).
    pub jitter: Duration,
    /// Allow jitter to reorder packets (default: off, packets stay FIFO).
    pub reorder: bool,
    /// Independent (Bernoulli) loss probability, 0.0..=1.0.
    pub loss: f64,
    /// Optional Gilbert-Elliott burst loss (applied in addition to `loss`).
    pub burst: Option<BurstLoss>,
    /// Rate limit in bit/s of IP packet bytes; 0 = unlimited.
    pub rate_bps: u64,
    /// Bottleneck queue (only meaningful with a rate limit).
    pub queue: Queue,
    /// Drop every packet.
    pub blackhole: bool,
    /// Drop every UDP packet (IPv4 and IPv6), let everything else through.
    pub drop_udp: bool,
}

impl Default for Impair {
    fn default() -> Self {
        Impair {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: false,
            loss: 0.0,
            burst: None,
            rate_bps: 0,
            queue: Queue::Time(Duration::from_millis(100)),
            blackhole: false,
            drop_udp: false,
        }
    }
}

impl Impair {
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    pub fn jitter(mut self, d: Duration) -> Self {
        self.jitter = d;
        self
    }
    pub fn reorder(mut self, on: bool) -> Self {
        self.reorder = on;
        self
    }
    /// Loss as a fraction (0.01 = 1 %).
    pub fn loss(mut self, fraction: f64) -> Self {
        self.loss = fraction.clamp(0.0, 1.0);
        self
    }
    pub fn burst(mut self, b: Option<BurstLoss>) -> Self {
        self.burst = b;
        self
    }
    /// Rate in bit/s, 0 = unlimited.
    pub fn rate_bps(mut self, bps: u64) -> Self {
        self.rate_bps = bps;
        self
    }
    pub fn queue(mut self, q: Queue) -> Self {
        self.queue = q;
        self
    }
    pub fn blackhole(mut self, on: bool) -> Self {
        self.blackhole = on;
        self
    }
    pub fn drop_udp(mut self, on: bool) -> Self {
        self.drop_udp = on;
        self
    }

    /// Queue limit in bytes for a given MTU (at least two MTU-sized packets).
    pub fn queue_limit_bytes(&self, mtu: u32) -> u64 {
        let mtu = u64::from(mtu);
        let b = match self.queue {
            Queue::Bytes(b) => b,
            Queue::Packets(n) => n.saturating_mul(mtu),
            Queue::Time(t) => {
                let bits = u128::from(self.rate_bps) * t.as_nanos() / 1_000_000_000;
                u64::try_from(bits / 8).unwrap_or(u64::MAX)
            }
        };
        b.max(2 * mtu)
    }

    /// Apply one `key=value` setting (keys as in the CLI, without the leading `--`).
    pub fn set_key(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "delay" => self.delay = parse_duration(value)?,
            "jitter" => self.jitter = parse_duration(value)?,
            "reorder" => self.reorder = parse_bool(value)?,
            "loss" => self.loss = parse_fraction(value)?,
            "burst-loss" | "burst" => self.burst = parse_burst(value)?,
            "rate" => self.rate_bps = parse_rate(value)?,
            "queue" => self.queue = parse_queue(value)?,
            "blackhole" => self.blackhole = parse_bool(value)?,
            "drop-udp" => self.drop_udp = parse_bool(value)?,
            _ => bail!("unknown setting {key:?}"),
        }
        Ok(())
    }
}

impl fmt::Display for Impair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delay={} jitter={} reorder={} loss={}%",
            fmt_duration(self.delay),
            fmt_duration(self.jitter),
            on_off(self.reorder),
            self.loss * 100.0
        )?;
        match self.burst {
            Some(b) => write!(
                f,
                " burst-loss={}%,{}%,{}%,{}%",
                b.p_enter * 100.0,
                b.p_exit * 100.0,
                b.loss_bad * 100.0,
                b.loss_good * 100.0
            )?,
            None => write!(f, " burst-loss=off")?,
        }
        if self.rate_bps == 0 {
            write!(f, " rate=unlimited")?;
        } else {
            write!(f, " rate={}bit", self.rate_bps)?;
        }
        match self.queue {
            Queue::Bytes(b) => write!(f, " queue={b}b")?,
            Queue::Packets(n) => write!(f, " queue={n}p")?,
            Queue::Time(t) => write!(f, " queue={}", fmt_duration(t))?,
        }
        write!(
            f,
            " blackhole={} drop-udp={}",
            on_off(self.blackhole),
            on_off(self.drop_udp)
        )
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn fmt_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

/// Which path(s) a change applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathSel {
    P1,
    P2,
    All,
}

impl PathSel {
    pub fn indices(self) -> &'static [usize] {
        match self {
            PathSel::P1 => &[0],
            PathSel::P2 => &[1],
            PathSel::All => &[0, 1],
        }
    }
    pub fn parse(s: &str) -> Result<PathSel> {
        match s {
            "1" => Ok(PathSel::P1),
            "2" => Ok(PathSel::P2),
            "all" | "both" | "1,2" => Ok(PathSel::All),
            _ => bail!("path must be 1, 2 or all, not {s:?}"),
        }
    }
}

/// Which direction(s): `Up` is client → server, `Down` is server → client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirSel {
    Up,
    Down,
    Both,
}

impl DirSel {
    pub fn indices(self) -> &'static [usize] {
        match self {
            DirSel::Up => &[0],
            DirSel::Down => &[1],
            DirSel::Both => &[0, 1],
        }
    }
    pub fn parse(s: &str) -> Result<DirSel> {
        match s {
            "up" => Ok(DirSel::Up),
            "down" => Ok(DirSel::Down),
            "both" => Ok(DirSel::Both),
            _ => bail!("dir must be up, down or both, not {s:?}"),
        }
    }
}

/// A parsed change request, e.g. `path=1 dir=up delay=100ms loss=2%` or `path=1 link=down`.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub path: PathSel,
    pub dir: DirSel,
    /// Reset the selected directions to a perfect link before applying `edits`.
    pub reset: bool,
    pub edits: Vec<(String, String)>,
    /// Take the path's client interface down (`Some(false)`) or bring it back (`Some(true)`).
    pub link: Option<bool>,
}

impl Change {
    /// Parse tokens separated by whitespace or commas. `burst-loss` takes a value with commas,
    /// so write it with `:` separators here (`burst-loss=1%:30%`) — the CLI converts for you.
    pub fn parse(spec: &str) -> Result<Change> {
        let mut c = Change {
            path: PathSel::All,
            dir: DirSel::Both,
            reset: false,
            edits: Vec::new(),
            link: None,
        };
        for tok in spec.split(|ch: char| ch.is_whitespace() || ch == ',') {
            if tok.is_empty() {
                continue;
            }
            if tok == "reset" {
                c.reset = true;
                continue;
            }
            let (k, v) = tok
                .split_once('=')
                .ok_or_else(|| anyhow!("expected key=value, got {tok:?}"))?;
            match k {
                "path" => c.path = PathSel::parse(v)?,
                "dir" => c.dir = DirSel::parse(v)?,
                "link" => {
                    c.link = Some(match v {
                        "up" => true,
                        "down" => false,
                        _ => bail!("link must be up or down, not {v:?}"),
                    })
                }
                _ => {
                    // Validate now so errors surface before anything changes.
                    Impair::default()
                        .set_key(k, v)
                        .with_context(|| format!("bad value in {tok:?}"))?;
                    c.edits.push((k.to_string(), v.to_string()));
                }
            }
        }
        Ok(c)
    }

    /// Apply the edits to one direction's settings.
    pub fn apply_to(&self, imp: &mut Impair) -> Result<()> {
        if self.reset {
            *imp = Impair::default();
        }
        for (k, v) in &self.edits {
            imp.set_key(k, v)?;
        }
        Ok(())
    }
}

/// `25ms`, `1.5s`, `500us`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, mult) = split_unit(s);
    let scale = match mult {
        "ns" => 1e-9,
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => bail!("duration {s:?} needs a unit: ns, us, ms or s"),
    };
    let v: f64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    if !(0.0..=3600.0 * 24.0).contains(&(v * scale)) {
        bail!("duration {s:?} out of range");
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// `1%` or a fraction `0.01`.
pub fn parse_fraction(s: &str) -> Result<f64> {
    let s = s.trim();
    let v = if let Some(p) = s.strip_suffix('%') {
        p.trim()
            .parse::<f64>()
            .with_context(|| format!("bad percentage {s:?}"))?
            / 100.0
    } else {
        s.parse::<f64>()
            .with_context(|| format!("bad fraction {s:?}"))?
    };
    if !(0.0..=1.0).contains(&v) {
        bail!("{s:?} is not between 0% and 100%");
    }
    Ok(v)
}

/// `200mbit`, `1gbit`, `500kbit`, `64000bit`; `0`, `off` or `unlimited` for no limit.
/// (`mbps`-style units are refused on purpose: tc reads them as bytes, people as bits.)
pub fn parse_rate(s: &str) -> Result<u64> {
    let s = s.trim().to_ascii_lowercase();
    if matches!(s.as_str(), "0" | "off" | "none" | "unlimited") {
        return Ok(0);
    }
    let (num, unit) = split_unit(&s);
    let mult = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => bail!("rate {s:?} needs a unit: bit, kbit, mbit or gbit"),
    };
    let v: f64 = num.parse().with_context(|| format!("bad rate {s:?}"))?;
    let bps = v * mult;
    if !(1000.0..=1e12).contains(&bps) {
        bail!("rate {s:?} out of range (1kbit..1000gbit)");
    }
    Ok(bps as u64)
}

/// `100p` (packets), `64kb`/`64kib`/`1mb`/`1mib`/`1500b` (bytes) or a time such as `50ms`.
pub fn parse_queue(s: &str) -> Result<Queue> {
    let s = s.trim().to_ascii_lowercase();
    let (num, unit) = split_unit(&s);
    let bytes_mult = match unit {
        "p" | "pkt" | "pkts" => {
            let n: u64 = num.parse().with_context(|| format!("bad queue {s:?}"))?;
            return Ok(Queue::Packets(n));
        }
        "b" => 1u64,
        "kb" => 1000,
        "kib" => 1024,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "ns" | "us" | "ms" | "s" => return Ok(Queue::Time(parse_duration(&s)?)),
        _ => bail!("queue {s:?} needs a unit: p (packets), b/kb/kib/mb/mib (bytes) or a time"),
    };
    let n: u64 = num.parse().with_context(|| format!("bad queue {s:?}"))?;
    Ok(Queue::Bytes(n.saturating_mul(bytes_mult)))
}

/// `off`, or `P_ENTER:P_EXIT[:LOSS_BAD[:LOSS_GOOD]]` (also accepts `,` between the numbers when
/// given on its own, as on the CLI).
pub fn parse_burst(s: &str) -> Result<Option<BurstLoss>> {
    let s = s.trim();
    if matches!(s, "off" | "0" | "none") {
        return Ok(None);
    }
    let parts: Vec<&str> = s.split([':', ',']).collect();
    if !(2..=4).contains(&parts.len()) {
        bail!("burst loss is P_ENTER:P_EXIT[:LOSS_BAD[:LOSS_GOOD]], e.g. 1%:30%, not {s:?}");
    }
    let p_enter = parse_fraction(parts[0])?;
    let p_exit = parse_fraction(parts[1])?;
    let loss_bad = match parts.get(2) {
        Some(p) => parse_fraction(p)?,
        None => 1.0,
    };
    let loss_good = match parts.get(3) {
        Some(p) => parse_fraction(p)?,
        None => 0.0,
    };
    Ok(Some(BurstLoss {
        p_enter,
        p_exit,
        loss_bad,
        loss_good,
    }))
}

pub fn parse_bool(s: &str) -> Result<bool> {
    match s.trim() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => bail!("expected on or off, not {s:?}"),
    }
}

fn split_unit(s: &str) -> (&str, &str) {
    let idx = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..idx], s[idx..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("25ms").unwrap(), Duration::from_millis(25));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("25").is_err());
        assert_eq!(parse_fraction("1%").unwrap(), 0.01);
        assert_eq!(parse_fraction("0.5").unwrap(), 0.5);
        assert!(parse_fraction("150%").is_err());
        assert_eq!(parse_rate("200mbit").unwrap(), 200_000_000);
        assert_eq!(parse_rate("off").unwrap(), 0);
        assert!(parse_rate("10mbps").is_err());
        assert_eq!(parse_queue("100p").unwrap(), Queue::Packets(100));
        assert_eq!(parse_queue("64kib").unwrap(), Queue::Bytes(65536));
        assert_eq!(
            parse_queue("50ms").unwrap(),
            Queue::Time(Duration::from_millis(50))
        );
        let b = parse_burst("1%:30%").unwrap().unwrap();
        assert_eq!(b.loss_bad, 1.0);
        assert!((b.mean_loss() - 0.01 / 0.31).abs() < 1e-9);
    }

    #[test]
    fn parses_change() {
        let c = Change::parse("path=2 dir=up delay=10ms,loss=1% burst-loss=1%:20%").unwrap();
        assert_eq!(c.path, PathSel::P2);
        assert_eq!(c.dir, DirSel::Up);
        let mut i = Impair::default();
        c.apply_to(&mut i).unwrap();
        assert_eq!(i.delay, Duration::from_millis(10));
        assert!(i.burst.is_some());
        assert!(Change::parse("path=3").is_err());
        assert!(Change::parse("delay=fast").is_err());
        assert_eq!(Change::parse("link=down").unwrap().link, Some(false));
    }

    #[test]
    fn queue_limit() {
        let i = Impair::default().rate_bps(8_000_000);
        // 100 ms at 1 MB/s.
        assert_eq!(i.queue_limit_bytes(1500), 100_000);
        assert_eq!(i.queue(Queue::Packets(10)).queue_limit_bytes(1500), 15_000);
    }
}
