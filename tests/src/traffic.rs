//! Traffic from inside network namespaces, in-process: a thread enters the
//! namespace (and ends there), so tests need no external tools.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use crate::netns::NetNs;

/// Runs `f` on a thread inside `ns` (or the host namespace for `None`).
pub fn in_netns<T: Send + 'static>(
    ns: Option<&NetNs>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let file = ns.map(|n| std::fs::File::open(n.path()).expect("netns file opens"));
    std::thread::spawn(move || {
        if let Some(f) = &file {
            setns(f, CloneFlags::CLONE_NEWNET).expect("setns into the test netns");
        }
        f()
    })
    .join()
    .expect("netns thread")
}

/// A server answering every connection with `greeting` and the peer's
/// address (`<greeting> <peer ip>`), until dropped.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub port: u16,
}

impl TcpServer {
    pub fn start(ns: Option<&NetNs>, greeting: &str) -> TcpServer {
        Self::start_on(ns, IpAddr::V4(Ipv4Addr::UNSPECIFIED), greeting)
    }

    /// Listening on `ip` (`::` for IPv6).
    pub fn start_on(ns: Option<&NetNs>, ip: IpAddr, greeting: &str) -> TcpServer {
        let listener = in_netns(ns, move || TcpListener::bind((ip, 0)).expect("bind"));
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, greeting) = (stop.clone(), greeting.to_string());
        // The socket stays in its namespace; serving it needs no setns.
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = writeln!(conn, "{greeting} {}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        TcpServer {
            stop,
            thread: Some(thread),
            port,
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` to `addr` and returns what the server said.
pub fn request(ns: Option<&NetNs>, addr: SocketAddr) -> std::io::Result<String> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim().to_string())
    })
}

/// Asserts that a TCP connection from `ns` to `addr` is refused at once
/// (an answer, not a timeout nor the SYN's retransmission a second later).
pub fn assert_refused_at_once(ns: Option<&NetNs>, addr: SocketAddr) {
    let started = std::time::Instant::now();
    let err = request(ns, addr).expect_err("nothing serves it");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{addr}: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{addr}: refused at once, not after {:?}",
        started.elapsed()
    );
}

/// Connects from `ns` to `addr` from local port `port` (0: any) and
/// returns what the server said and the port used. The connection ends
/// with a reset, leaving no TIME_WAIT behind, so the port can be used again
/// at once, as a busy client reuses its ports.
pub fn request_from_port(
    ns: Option<&NetNs>,
    port: u16,
    addr: std::net::SocketAddrV4,
) -> std::io::Result<(String, u16)> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
    };
    let timeout = nix::sys::time::TimeVal::new(2, 0);
    in_netns(ns, move || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        // connect() gives up after the send timeout.
        setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(0, 0, 0, 0, port),
        )?;
        let local: SockaddrIn =
            nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(addr),
        )?;
        let abort = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        setsockopt(&fd, sockopt::Linger, &abort)?;
        let mut s = TcpStream::from(fd);
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok((out.trim().to_string(), local.port()))
    })
}

/// An IPv4 address of the host that pods can reach: the source address of
/// the host's route towards the outside, else any global address.
pub fn host_address() -> std::net::Ipv4Addr {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip addr");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("the host has a global IPv4 address")
}

/// A TCP echo server (one line in, the same line out, per connection,
/// connections kept open) until dropped.
pub struct EchoServer {
    inner: TcpServer,
}

impl EchoServer {
    pub fn start(ns: Option<&NetNs>) -> EchoServer {
        let listener = in_netns(ns, || TcpListener::bind("0.0.0.0:0").expect("bind"));
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        std::thread::spawn(move || echo(conn));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        EchoServer {
            inner: TcpServer {
                stop,
                thread: Some(thread),
                port,
            },
        }
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }
}

fn echo(mut conn: TcpStream) {
    // Long enough for a test to reload the programs between two round
    // trips on a loaded machine (the verifier takes seconds).
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let mut buf = [0u8; 512];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// A TCP connection opened from inside `ns` (the socket stays in it).
pub fn connect(ns: Option<&NetNs>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    in_netns(ns, move || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(s)
    })
}

/// Sends `line` on `conn` and returns the echo.
pub fn round_trip(conn: &mut TcpStream, line: &str) -> std::io::Result<String> {
    conn.write_all(line.as_bytes())?;
    let mut buf = vec![0u8; line.len()];
    conn.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A UDP server in `ns` answering each datagram with `greeting <peer ip>`.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub port: u16,
    /// Datagrams received, by source address.
    pub received: Arc<std::sync::Mutex<Vec<std::net::IpAddr>>>,
}

impl UdpServer {
    pub fn start(ns: Option<&NetNs>, greeting: &str) -> UdpServer {
        Self::start_on(ns, IpAddr::V4(Ipv4Addr::UNSPECIFIED), greeting)
    }

    /// Bound to `ip` (`::` for IPv6).
    pub fn start_on(ns: Option<&NetNs>, ip: IpAddr, greeting: &str) -> UdpServer {
        let sock = in_netns(ns, move || {
            std::net::UdpSocket::bind((ip, 0)).expect("bind")
        });
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let port = sock.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, r, greeting) = (stop.clone(), received.clone(), greeting.to_string());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    r.lock().expect("lock").push(peer.ip());
                    let _ = sock.send_to(format!("{greeting} {}", peer.ip()).as_bytes(), peer);
                }
            }
        });
        UdpServer {
            stop,
            thread: Some(thread),
            port,
            received,
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends one datagram from `ns` to `addr` and returns the answer. The
/// socket is connected: only an answer from `addr` counts, and an ICMP
/// error about the datagram fails the call (port unreachable:
/// `ConnectionRefused`), as for a real client.
pub fn udp_request(ns: Option<&NetNs>, addr: SocketAddr) -> std::io::Result<String> {
    let any = match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    udp_request_from(ns, any, addr)
}

/// [`udp_request`] from source address `src` (one of the namespace's
/// addresses, or the unspecified one).
pub fn udp_request_from(
    ns: Option<&NetNs>,
    src: IpAddr,
    addr: SocketAddr,
) -> std::io::Result<String> {
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind((src, 0))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.connect(addr)?;
        s.send(b"hello")?;
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })
}

/// A UDP exchange between a client in `client_ns` and `backend` (a bound
/// socket in its pod), reached through `addr` (a service): the client asks,
/// the backend answers, then the client's socket goes and the backend
/// sends again. Returns what the backend's socket then says: the client's
/// kernel answers port unreachable, which a backend hearing of it as
/// being about its own flow turns into `ConnectionRefused`.
pub fn backend_talks_after_the_client_left(
    backend: &std::net::UdpSocket,
    client_ns: Option<&NetNs>,
    addr: SocketAddr,
) -> std::io::Result<()> {
    backend.set_read_timeout(Some(Duration::from_secs(2)))?;
    let any = match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let client = in_netns(client_ns, move || {
        let s = std::net::UdpSocket::bind((any, 0))?;
        s.connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok::<_, std::io::Error>(s)
    })?;
    client.send(b"hello")?;
    let mut buf = [0u8; 64];
    let (_, from) = backend.recv_from(&mut buf)?;
    backend.connect(from)?;
    backend.send(b"one")?;
    let n = client.recv(&mut buf)?;
    assert_eq!(&buf[..n], b"one", "the backend's answer reaches the client");
    drop(client);
    // Sent until the client's kernel answers for want of a socket: a child
    // that another test's thread forks meanwhile holds the socket until it
    // execs, and a datagram arriving then is queued to it, unanswered.
    backend.set_read_timeout(Some(Duration::from_millis(250)))?;
    for _ in 0..8 {
        backend.send(b"two")?;
        match backend.recv(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => return other.map(|_| ()),
        }
    }
    Err(ErrorKind::WouldBlock.into())
}

/// Sends, from inside `ns`, a UDP datagram whose IPv4 source address is
/// forged to `src` (a raw socket with our own IP header), as a pod trying
/// to spoof would.
pub fn send_forged_udp(
    ns: &NetNs,
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    dport: u16,
) -> std::io::Result<()> {
    in_netns(Some(ns), move || {
        // SAFETY: plain socket syscalls on a descriptor we own and close.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut packet = crate::packet::ip_header(src, dst, 17, 28, 64).to_vec();
            packet.extend_from_slice(&4321u16.to_be_bytes());
            packet.extend_from_slice(&dport.to_be_bytes());
            packet.extend_from_slice(&8u16.to_be_bytes());
            packet.extend_from_slice(&[0, 0]); // no UDP checksum
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            let sent = libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let result = if sent < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            };
            libc::close(fd);
            result
        }
    })
}

/// Which end of a [`bulk_transfer`] sends; the other discards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkSender {
    Client,
    Server,
}

/// Moves `bytes` over one TCP connection from `client`'s namespace to a
/// server in `server`'s, or back (`sender`); returns when all arrived.
/// `dial` gives the address to connect to for the server's port (the
/// server's own, or a service in front of it).
pub fn bulk_transfer(
    client: &NetNs,
    server: &NetNs,
    dial: impl FnOnce(u16) -> SocketAddr,
    sender: BulkSender,
    bytes: usize,
) -> std::io::Result<()> {
    let listener = in_netns(Some(server), || TcpListener::bind("0.0.0.0:0"))?;
    let addr = dial(listener.local_addr()?.port());
    let far_end = std::thread::spawn(move || -> std::io::Result<usize> {
        let (conn, _) = listener.accept()?;
        match sender {
            BulkSender::Client => drain(conn),
            BulkSender::Server => fill(conn, bytes),
        }
    });
    let conn = connect(Some(client), addr)?;
    let near = match sender {
        BulkSender::Client => fill(conn, bytes),
        BulkSender::Server => drain(conn),
    };
    let far = far_end.join().expect("the server's thread")?;
    let (sent, received) = match sender {
        BulkSender::Client => (near?, far),
        BulkSender::Server => (far, near?),
    };
    if received != sent {
        return Err(std::io::Error::other(format!(
            "sent {sent}, received {received}"
        )));
    }
    Ok(())
}

/// Writes at least `bytes` on `conn` and closes it; how many it wrote.
fn fill(mut conn: TcpStream, bytes: usize) -> std::io::Result<usize> {
    let chunk = vec![0x5au8; 1 << 16];
    let mut sent = 0;
    while sent < bytes {
        conn.write_all(&chunk)?;
        sent += chunk.len();
    }
    Ok(sent)
}

/// Reads `conn` to its end; how many bytes came.
fn drain(mut conn: TcpStream) -> std::io::Result<usize> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match conn.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}
