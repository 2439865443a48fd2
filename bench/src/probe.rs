//! The measuring end of the cluster benchmarks, run as `bench probe` inside
//! a pod's network namespace (`nsenter --net`) or on a node (`scripts/cluster
//! exec`, in the node's cgroups, where host-networked clients are balanced):
//! a process of its own, so it stands where a workload would.
//!
//! - [`serve`]: answers every connection with a short reply at once (no
//!   fork per request, unlike busybox httpd), so latencies are the path's;
//! - [`latencies`]: connect, one request and its answer, close, in sequence;
//! - [`until`]: tries to connect until the address opens (or closes), and
//!   says when, as wall-clock time the parent compares with its own;
//! - [`echo`], [`crr`] and [`rr`]: the datapath benchmark's transactions,
//!   netperf's TCP_CRR and TCP_RR in shape: a server that answers each
//!   [`TRANSACTION`]-byte request on the connection it came on, one
//!   connection at a time (nothing spawned per connection, so the cost
//!   measured is the network path's), and clients that connect, exchange
//!   once and close, or exchange on one connection again and again;
//! - [`udp_send`] and [`udp_sink`]: a UDP stream at a fixed rate, paced by
//!   sleeping between 1 ms slices (iperf3's `-b` pacing spins at random,
//!   which swamps the CPU a path costs), and its counting end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// What the server answers.
const ANSWER: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

/// Answers connections on `port` until killed, a thread each.
///
/// # Errors
/// The port cannot be bound.
pub fn serve(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("port {port}"))?;
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || answer(stream));
    }
    Ok(())
}

fn answer(mut stream: TcpStream) {
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(ANSWER);
}

/// One connection: connect (within `connect`), request, the whole answer,
/// close.
fn exchange(to: SocketAddr, connect: Duration) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&to, connect)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(REQUEST)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    if !answer.ends_with(b"ok\n") {
        bail!("{to} answered {:?}", String::from_utf8_lossy(&answer));
    }
    Ok(())
}

/// `count` exchanges with `to` in sequence, each's time in microseconds.
///
/// # Errors
/// An exchange fails.
pub fn latencies(to: SocketAddr, count: usize) -> Result<Vec<u64>> {
    (0..count)
        .map(|_| {
            let start = Instant::now();
            exchange(to, Duration::from_secs(2)).with_context(|| format!("exchange with {to}"))?;
            Ok(start.elapsed().as_micros() as u64)
        })
        .collect()
}

/// Bytes of a transaction's request and of its answer.
pub const TRANSACTION: usize = 16;

/// Answers every [`TRANSACTION`]-byte request with as many bytes, on the
/// connection it came on, one connection at a time, until killed.
///
/// # Errors
/// The port cannot be bound.
pub fn echo(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("port {port}"))?;
    for mut stream in listener.incoming().flatten() {
        let _ = stream.set_nodelay(true);
        let mut request = [0u8; TRANSACTION];
        while stream.read_exact(&mut request).is_ok() {
            if stream.write_all(&request).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// One request and its whole answer on `stream`.
fn transact(stream: &mut TcpStream) -> Result<()> {
    let request = [b'q'; TRANSACTION];
    let mut answer = [0u8; TRANSACTION];
    stream.write_all(&request)?;
    stream.read_exact(&mut answer)?;
    Ok(())
}

fn connect(to: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(stream)
}

/// What a run of transactions took: each one's time, and the run's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transactions {
    pub nanos: Vec<u64>,
    pub total_nanos: u64,
}

fn timed(count: usize, mut one: impl FnMut() -> Result<()>) -> Result<Transactions> {
    let start = Instant::now();
    let nanos = (0..count)
        .map(|_| {
            let t = Instant::now();
            one()?;
            Ok(t.elapsed().as_nanos() as u64)
        })
        .collect::<Result<Vec<u64>>>()?;
    Ok(Transactions {
        nanos,
        total_nanos: start.elapsed().as_nanos() as u64,
    })
}

/// `count` times in sequence: connect to an [`echo`] server, one
/// transaction, close.
///
/// # Errors
/// A connection or a transaction fails.
pub fn crr(to: SocketAddr, count: usize) -> Result<Transactions> {
    timed(count, || {
        let mut stream = connect(to)?;
        transact(&mut stream).with_context(|| format!("transaction with {to}"))
    })
}

/// `count` transactions in sequence on one connection to an [`echo`]
/// server (the connection is made before timing starts).
///
/// # Errors
/// The connection or a transaction fails.
pub fn rr(to: SocketAddr, count: usize) -> Result<Transactions> {
    let mut stream = connect(to)?;
    timed(count, || {
        transact(&mut stream).with_context(|| format!("transaction with {to}"))
    })
}

/// Whether [`until`] waits for the address to open or to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Awaited {
    Open,
    Closed,
}

/// How long [`until`] tries, and each attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempts {
    pub within: Duration,
    /// A connect attempt that neither opens nor is refused within this
    /// counts as not open.
    pub each: Duration,
}

/// Tries `to` until it is `awaited` (open: an exchange succeeds; closed:
/// a connect fails), then returns the wall-clock time of that attempt's
/// end in nanoseconds since the epoch. `ready` is called once before the
/// first attempt.
///
/// # Errors
/// `attempts.within` passes first.
pub fn until(
    to: SocketAddr,
    awaited: Awaited,
    attempts: Attempts,
    ready: impl FnOnce(),
) -> Result<u128> {
    ready();
    let start = Instant::now();
    let within = attempts.within;
    while start.elapsed() < within {
        let open = match awaited {
            Awaited::Open => exchange(to, attempts.each).is_ok(),
            Awaited::Closed => TcpStream::connect_timeout(&to, attempts.each).is_ok(),
        };
        if open == (awaited == Awaited::Open) {
            return Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    bail!("{to} not {awaited:?} within {within:?}")
}

/// What a UDP stream carried: counted by its sender or by its sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Datagrams {
    pub datagrams: u64,
    /// UDP payload bytes.
    pub bytes: u64,
}

/// The slice [`udp_send`] paces in: what it owes is sent at each slice's
/// start, then it sleeps.
const PACING_SLICE: Duration = Duration::from_millis(1);

/// Sends `length`-byte datagrams to `to` for `duration` at `mbit` Mbit/s of
/// payload. A send the kernel refuses (a full queue) is not counted and not
/// retried, as a real-time sender would not.
///
/// # Errors
/// No socket can be had.
pub fn udp_send(to: SocketAddr, mbit: f64, length: usize, duration: Duration) -> Result<Datagrams> {
    // Unconnected, so an ICMP error from a path that drops does not fail
    // the sends that follow.
    let socket = UdpSocket::bind(("0.0.0.0", 0)).context("a UDP socket")?;
    let payload = vec![b'u'; length];
    let bytes_per_second = mbit * 1e6 / 8.0;
    let start = Instant::now();
    let (mut offered, mut sent) = (
        0u64,
        Datagrams {
            datagrams: 0,
            bytes: 0,
        },
    );
    loop {
        // The last slice sends what the whole duration owes, however late
        // a sleep ended: the stream's size is fixed.
        let elapsed = start.elapsed().min(duration);
        let owed = (elapsed.as_secs_f64() * bytes_per_second) as u64;
        while offered * (length as u64) < owed {
            offered += 1;
            if socket.send_to(&payload, to).is_ok() {
                sent.datagrams += 1;
                sent.bytes += length as u64;
            }
        }
        if elapsed == duration {
            break;
        }
        std::thread::sleep(PACING_SLICE);
    }
    Ok(sent)
}

const SINK_BUFFER: usize = 4 << 20;

/// Counts what arrives on UDP `port` from the first datagram until none
/// came for `idle`; `ready` is called once the port is bound.
///
/// # Errors
/// The port cannot be bound, or nothing arrives within `within`.
pub fn udp_sink(
    port: u16,
    idle: Duration,
    within: Duration,
    ready: impl FnOnce(),
) -> Result<Datagrams> {
    let socket = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("UDP port {port}"))?;
    // Room for what arrives while the sink waits for the CPU, so that a
    // loss is the path's, not the sink's (the kernel caps it at
    // net.core.rmem_max).
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &SINK_BUFFER)
        .context("SO_RCVBUF")?;
    ready();
    socket.set_read_timeout(Some(within))?;
    let mut buf = vec![0u8; 65536];
    let mut got = Datagrams {
        datagrams: 0,
        bytes: 0,
    };
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                got.datagrams += 1;
                got.bytes += n as u64;
                socket.set_read_timeout(Some(idle))?;
            }
            Err(e) if got.datagrams == 0 => {
                return Err(e)
                    .with_context(|| format!("no datagram on port {port} within {within:?}"));
            }
            Err(_) => return Ok(got),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_udp_stream_keeps_its_rate_and_its_sink_counts_every_datagram() {
        let (tx, rx) = std::sync::mpsc::channel();
        let port = {
            // A free port, found by binding one and letting it go.
            let probe = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
            probe.local_addr().unwrap().port()
        };
        let sink = std::thread::spawn(move || {
            udp_sink(
                port,
                Duration::from_millis(200),
                Duration::from_secs(5),
                || tx.send(()).unwrap(),
            )
        });
        rx.recv().unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        let sent = udp_send(to, 40.0, 1000, Duration::from_millis(500)).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(500), "not paced");
        let got = sink.join().unwrap().unwrap();
        // 40 Mbit/s for 0.5 s: 2.5 MB, 2,500 datagrams of 1,000 bytes.
        assert_eq!(sent.datagrams, 2_500);
        assert_eq!(got, sent, "loopback lost or invented datagrams");
    }

    #[test]
    fn a_sink_that_hears_nothing_says_so() {
        let err = udp_sink(
            0,
            Duration::from_millis(10),
            Duration::from_millis(50),
            || {},
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("no datagram"), "{err:#}");
    }
}
