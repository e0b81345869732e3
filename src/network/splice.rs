//! Zero-copy relaying of an untouched tunnel: splice(2) moves the bytes from one TCP socket
//! into a pipe and from the pipe into the other socket inside the kernel, so a bulk download
//! through the policy point is not paid for twice in copies to and from user space (about
//! 0.6x of a direct connection with tokio's copy, bench/results/network.md).
//!
//! Both sockets stay registered with tokio: readiness comes from `readable()`/`writable()`
//! and every splice runs inside `try_io`, which clears the readiness when the kernel says
//! EAGAIN. Only the socket can be the reason for EAGAIN: the pipe is empty whenever it is
//! filled and holds data whenever it is drained.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The pipe's size. Each socket buffer spliced in takes one slot of the pipe (16 in a
/// default 64 KiB pipe), however few bytes it holds: without receive offload (a veth pair,
/// many NICs) that is one 1448-byte segment per slot, and a default pipe then moves 23 KiB
/// per pair of system calls, slower than a buffered copy. 256 slots move 370 KiB.
const PIPE_SIZE: usize = 1 << 20;

/// Below this a pipe is not worth it. The kernel hands out 2-slot pipes, and refuses to
/// enlarge any, once the user (agentuser-net, shared by every run's policy point) holds
/// more than fs.pipe-user-pages-soft (64 MiB) of pipes; the copy through a buffer is then
/// the faster way.
const PIPE_MIN: usize = 64 << 10;

/// How much one splice into the pipe may move: all of it.
const SPLICE_LEN: usize = PIPE_SIZE;

/// The pipe one direction of a tunnel goes through.
pub struct Pipe {
    read_end: OwnedFd,
    write_end: OwnedFd,
}

impl Pipe {
    /// Fails when the process is out of descriptors or the pipe is too small to be worth
    /// it; the caller then copies through a buffer instead.
    pub fn new() -> io::Result<Pipe> {
        let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let size = match fcntl(write_end.as_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32)) {
            Ok(size) => size,
            Err(_) => fcntl(write_end.as_fd(), FcntlArg::F_GETPIPE_SZ)?,
        };
        if usize::try_from(size).unwrap_or(0) < PIPE_MIN {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        Ok(Pipe {
            read_end,
            write_end,
        })
    }

    /// Moves everything `from` sends to `to`, until `from` reaches end of file (its peer
    /// shut down its write side or closed). Returns the bytes moved. Does not shut `to`
    /// down: the caller does, as after any copy.
    pub async fn copy(self, from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
        let mut moved = 0u64;
        loop {
            let filled = fill(from, &self.write_end).await?;
            if filled == 0 {
                return Ok(moved);
            }
            drain(&self.read_end, to, filled).await?;
            moved += filled as u64;
        }
    }
}

/// One splice from the socket into the (empty) pipe: what the socket has, up to what the
/// pipe holds; 0 at end of file.
async fn fill(from: &TcpStream, pipe_in: &OwnedFd) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        from.readable().await?;
        let spliced = from.try_io(Interest::READABLE, || {
            splice(from.as_fd(), None, pipe_in.as_fd(), None, SPLICE_LEN, flags)
                .map_err(io::Error::from)
        });
        match spliced {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

/// Splices `len` bytes from the pipe into the socket, waiting whenever its send buffer is
/// full.
async fn drain(pipe_out: &OwnedFd, to: &TcpStream, mut len: usize) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    while len > 0 {
        to.writable().await?;
        let spliced = to.try_io(Interest::WRITABLE, || {
            splice(pipe_out.as_fd(), None, to.as_fd(), None, len, flags).map_err(io::Error::from)
        });
        match spliced {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => len -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
