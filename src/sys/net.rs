//! Network plumbing for the policy point (docs/design.md section 8): default routes through
//! loopback in the agent's network namespace, the original destination of a connection that
//! netfilter redirected, and passing a descriptor over a unix socket.

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// `struct rtentry` of glibc's <net/route.h> (the libc crate has it for musl only).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// `struct in6_rtmsg` of <linux/ipv6_route.h> (the libc crate keeps its fields private).
#[repr(C)]
struct In6RtMsg {
    rtmsg_dst: [u8; 16],
    rtmsg_src: [u8; 16],
    rtmsg_gateway: [u8; 16],
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: libc::c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: libc::c_int,
}

const RTF_UP: u16 = 0x0001;

/// Adds IPv4 and IPv6 default routes through `lo` in the current network namespace, so a
/// connection to any address gets as far as netfilter's output hook (which redirects it to
/// the policy point) instead of failing with "network unreachable" before it.
pub fn default_routes_via_loopback() -> Result<()> {
    let v4 = socket(libc::AF_INET)?;
    let mut dev = *b"lo\0";
    // SAFETY: RtEntry and sockaddr are plain old data; all-zero is a valid value.
    let mut route: RtEntry = unsafe { std::mem::zeroed() };
    route.rt_dst.sa_family = libc::AF_INET as libc::sa_family_t;
    route.rt_genmask.sa_family = libc::AF_INET as libc::sa_family_t;
    route.rt_flags = RTF_UP;
    route.rt_dev = dev.as_mut_ptr().cast();
    // SAFETY: SIOCADDRT reads one rtentry and the NUL-terminated device name it points to;
    // both live until the call returns.
    let rc = unsafe { libc::ioctl(v4.as_raw_fd(), libc::SIOCADDRT, &route) };
    Errno::result(rc).context("adding the IPv4 default route")?;

    let v6 = socket(libc::AF_INET6)?;
    // SAFETY: In6RtMsg is plain old data; all-zero is a valid value.
    let mut route6: In6RtMsg = unsafe { std::mem::zeroed() };
    route6.rtmsg_flags = u32::from(RTF_UP);
    route6.rtmsg_metric = 1;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    route6.rtmsg_ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as libc::c_int;
    // SAFETY: SIOCADDRT on an AF_INET6 socket reads one in6_rtmsg.
    let rc = unsafe { libc::ioctl(v6.as_raw_fd(), libc::SIOCADDRT, &route6) };
    Errno::result(rc).context("adding the IPv6 default route")?;
    Ok(())
}

/// Adds `addr`/32 to loopback as the alias `lo:1`. Its scope is global (127.0.0.1's is
/// host), so the kernel can pick it as the source address of connections routed through
/// loopback; with no such address they would leave from 0.0.0.0, and replies could not be
/// matched to the redirected flow.
pub fn loopback_source_address(addr: Ipv4Addr) -> Result<()> {
    let sock = socket(libc::AF_INET)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo:1\0") {
        *dst = *src as libc::c_char;
    }
    let set = |req: &mut libc::ifreq, a: Ipv4Addr, op: libc::c_ulong, what: &str| {
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(a).to_be();
        // SAFETY: the ifreq union holds a struct sockaddr (16 bytes) where sockaddr_in (16
        // bytes) is written, through a pointer into `req`, which is valid and writable.
        unsafe { std::ptr::write((&raw mut req.ifr_ifru).cast::<libc::sockaddr_in>(), sin) };
        // SAFETY: the ioctl reads one initialised ifreq and writes nothing back.
        Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), op, &*req) })
            .map(drop)
            .with_context(|| what.to_owned())
    };
    set(
        &mut req,
        addr,
        libc::SIOCSIFADDR,
        "adding a loopback source address",
    )?;
    set(
        &mut req,
        Ipv4Addr::BROADCAST,
        libc::SIOCSIFNETMASK,
        "setting its netmask",
    )
}

fn socket(family: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The destination a redirected TCP connection was made to, before netfilter's `redirect`
/// rewrote it (SO_ORIGINAL_DST, from the connection tracking entry).
pub fn original_destination(fd: BorrowedFd, ipv6: bool) -> std::io::Result<SocketAddr> {
    if ipv6 {
        // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `addr`, which has that size.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_IPV6,
                libc::IP6T_SO_ORIGINAL_DST,
                (&raw mut addr).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(addr.sin6_port),
            0,
            0,
        )))
    } else {
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `addr`, which has that size.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_IP,
                libc::SO_ORIGINAL_DST,
                (&raw mut addr).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(addr.sin_port),
        )))
    }
}

/// Sends one descriptor (and one byte) over a unix stream socket.
pub fn send_fd(socket: BorrowedFd, fd: BorrowedFd) -> Result<()> {
    let fds = [fd.as_raw_fd()];
    let iov = [IoSlice::new(b"n")];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("passing a descriptor")?;
    Ok(())
}

/// Receives what [`send_fd`] sent: `Ok(None)` when the peer closed the socket without
/// sending a descriptor, and the bytes it sent instead (an error message).
pub fn recv_fd(socket: BorrowedFd) -> Result<std::result::Result<OwnedFd, Vec<u8>>> {
    let mut byte = [0u8; 512];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            other => break other.context("receiving a descriptor")?,
        }
    };
    let mut received = None;
    for cmsg in msg.cmsgs().context("reading control messages")? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: the kernel just installed `raw` in this process for us (SCM_RIGHTS);
                // nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    let len = msg.bytes;
    match received {
        Some(fd) => Ok(Ok(fd)),
        None => {
            if len == 0 {
                return Ok(Err(Vec::new()));
            }
            let text = byte[..len].to_vec();
            if text.is_empty() {
                bail!("no descriptor received");
            }
            Ok(Err(text))
        }
    }
}

/// Closes every descriptor above 2 except those in `keep`.
pub fn close_all_except(keep: &[RawFd]) -> Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|&&fd| fd > 2)
        .map(|&fd| fd as u32)
        .collect();
    keep.sort_unstable();
    let mut first = 3u32;
    for fd in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if fd > first {
            // SAFETY: plain system call; the caller owns every descriptor in the range (no
            // Rust object that outlives this call refers to one).
            let rc = unsafe { libc::syscall(libc::SYS_close_range, first, fd - 1, 0u32) };
            Errno::result(rc).context("close_range")?;
        }
        first = fd.saturating_add(1);
    }
    Ok(())
}

/// Reno for one TCP socket: a hop over loopback gains nothing from congestion control and
/// pays for pacing when the host's default is BBR (see `network::netns::no_pacing`). Best
/// effort: Reno is always built in and allowed to any process, so this fails only on a
/// socket that is not TCP.
pub fn without_pacing(socket: BorrowedFd) {
    let _ = nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::TcpCongestion,
        &std::ffi::OsString::from("reno"),
    );
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    /// A socket made without pacing reports Reno, whatever the host's default.
    #[test]
    fn a_socket_without_pacing_is_reno() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let socket =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        super::without_pacing(socket.as_fd());
        let algorithm =
            nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::TcpCongestion)
                .expect("TCP_CONGESTION");
        assert_eq!(algorithm, "reno");
    }
}
