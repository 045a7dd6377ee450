//! Raw-socket set-up the standard library does not offer: a non-blocking connect from a
//! chosen source address (so that many source addresses share the ephemeral ports), a
//! blocking connect with a small receive buffer set before the handshake (a reader that
//! stalls fills up fast), and `SO_LINGER` 0 (a close that sends RST). The `unsafe` lives here
//! and nowhere else on the client side.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd};

/// Starts a non-blocking connect to `to`, from `from` (port chosen by the kernel at connect
/// time, so that many source addresses can share the ephemeral port range).
pub fn connect_from(from: Option<Ipv4Addr>, to: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let to = v4(to)?;
    let sock = socket(libc::SOCK_NONBLOCK)?;
    let fd = sock.as_raw_fd();
    // Best effort, as before: a tool that cannot set them still measures.
    let _ = set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    if let Some(ip) = from {
        let _ = set_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
        let sin = sockaddr(SocketAddrV4::new(ip, 0));
        // SAFETY: bind reads one sockaddr_in from a live local of the size passed with it.
        let rc = unsafe { libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), SIN_LEN) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    match connect(fd, to) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    Ok(mio::net::TcpStream::from_std(sock))
}

/// A blocking connection to `to` whose receive buffer is `rcvbuf` bytes, set before the
/// handshake so that the advertised window is small from the first byte.
pub fn connect_small_rcvbuf(
    to: SocketAddr,
    rcvbuf: libc::c_int,
) -> io::Result<std::net::TcpStream> {
    let to = v4(to)?;
    let sock = socket(0)?;
    let _ = set_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf);
    connect(sock.as_raw_fd(), to)?;
    Ok(sock)
}

/// `SO_LINGER` with a zero timeout: closing the socket then resets the connection.
pub fn set_linger_zero(sock: &impl AsRawFd) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: SO_LINGER reads one `linger` struct from a valid pointer of its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    last_error_unless(rc == 0)
}

const SIN_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

fn v4(addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(v4) => Ok(v4),
        SocketAddr::V6(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "IPv4 only")),
    }
}

/// A new IPv4 TCP socket (`extra` flags beside `SOCK_CLOEXEC`), owned at once so that every
/// error path closes it.
fn socket(extra: libc::c_int) -> io::Result<std::net::TcpStream> {
    // SAFETY: socket() has no memory effects; the descriptor it returns is ours alone and its
    // ownership moves into the TcpStream once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | extra, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(std::net::TcpStream::from_raw_fd(fd))
    }
}

fn set_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int from a live local of the size passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    last_error_unless(rc == 0)
}

fn connect(fd: libc::c_int, to: SocketAddrV4) -> io::Result<()> {
    let sin = sockaddr(to);
    // SAFETY: connect reads one sockaddr_in from a live local of the size passed with it.
    let rc = unsafe { libc::connect(fd, (&sin as *const libc::sockaddr_in).cast(), SIN_LEN) };
    last_error_unless(rc == 0)
}

fn last_error_unless(ok: bool) -> io::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_linger_zero_close_resets_the_peer() {
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else { return };
        let Ok(addr) = listener.local_addr() else { return };
        let client = connect_small_rcvbuf(addr, 4096);
        assert!(client.is_ok(), "{client:?}");
        let Ok((mut accepted, _)) = listener.accept() else { panic!("accept") };
        if let Ok(client) = client {
            assert!(set_linger_zero(&client).is_ok());
            drop(client);
        }
        let mut buf = [0u8; 8];
        let got = accepted.read(&mut buf);
        assert!(matches!(&got, Err(e) if e.kind() == io::ErrorKind::ConnectionReset), "{got:?}");
    }
}
