//! A host-networked client for the tests: joins a cgroup (whose
//! connect-time programs then see its sockets), asks a server over TCP or
//! UDP, and prints the answer's first line and whom the socket says
//! answered (TCP: its peer name; UDP: the datagram's source, from an
//! unconnected socket).
//!
//! `margay-ask <cgroup dir> tcp|udp <addr:port>`

#![allow(clippy::print_stdout)] // Its answer is its output.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cgroup, protocol, addr] = args.as_slice() else {
        return Err("usage: margay-ask <cgroup dir> tcp|udp <addr:port>".into());
    };
    let addr: SocketAddr = addr.parse()?;
    // Before any socket exists: a socket belongs to the cgroup it was
    // made in.
    std::fs::write(
        std::path::Path::new(cgroup).join("cgroup.procs"),
        std::process::id().to_string(),
    )?;
    let timeout = Some(Duration::from_secs(3));
    let (answer, from) = match protocol.as_str() {
        "tcp" => {
            let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            conn.set_read_timeout(timeout)?;
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line)?;
            (line.trim_end().to_string(), conn.peer_addr()?)
        }
        "udp" => {
            let any: SocketAddr = if addr.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            }
            .parse()?;
            let socket = UdpSocket::bind(any)?;
            socket.set_read_timeout(timeout)?;
            socket.send_to(b"hello", addr)?;
            let mut buf = [0u8; 512];
            let (n, from) = socket.recv_from(&mut buf)?;
            (
                String::from_utf8_lossy(&buf[..n]).trim_end().to_string(),
                from,
            )
        }
        other => return Err(format!("protocol {other:?}: tcp or udp").into()),
    };
    println!("{answer}\n{from}");
    Ok(())
}
