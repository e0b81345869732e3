//! Refused packets that no socket of the policy point sees: UDP other than DNS (QUIC, NTP, a
//! resolver of the agent's choosing on another port), ICMP (ping), and any other protocol to
//! an address outside the namespace. The ruleset of [`super::netns`] drops them and hands a
//! copy of their first bytes to netfilter's log group [`GROUP`]; the policy point reads that
//! group over a netlink socket it bound as root in the agent's namespace (binding needs
//! CAP_NET_ADMIN there; reading does not) and logs each as a refusal, like a refused
//! connection (docs/threat-model.md row 27).
//!
//! The packets are the agent's own making: they are parsed by etherparse, never trusted, and
//! only their protocol, destination address and port are logged. The log stops after
//! `log::MAX_PER_RUN` lines a run; in a flood the kernel drops reports (ENOBUFS) rather than
//! queue them without bound.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigMode, ConfigNla, PacketNla, ULogMessage, config_request,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

use super::dns::Names;
use super::proxy::Shared;

/// The netfilter log group of refused packets (log groups are per network namespace: the
/// agent's has only this one).
pub const GROUP: u16 = 7;

/// How much of a packet the kernel copies: enough for an IPv6 header and a transport header.
const COPY_BYTES: u32 = 96;

/// Opens the log group's socket in the current (the agent's) network namespace. As root.
pub fn open() -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .context("netfilter log socket")?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).context("binding it")?;
    configure(&fd, vec![ConfigNla::Cmd(ConfigCmd::Bind)])?;
    // Each report at once (the kernel's default batches 100 for up to a second, and the
    // run may end sooner).
    configure(
        &fd,
        vec![
            ConfigNla::Mode(ConfigMode::new_packet(COPY_BYTES)),
            ConfigNla::QThresh(1),
        ],
    )?;
    Ok(fd)
}

/// Sends one configuration request for [`GROUP`] and waits for the kernel's answer.
fn configure(fd: &OwnedFd, nlas: Vec<ConfigNla>) -> Result<()> {
    let message = config_request(NetfilterProtoFamily::Unspec, GROUP, nlas);
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    send(fd.as_raw_fd(), &bytes, MsgFlags::empty())
        .context("configuring the netfilter log group")?;
    let mut reply = vec![0u8; 4096];
    let n = recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty())
        .context("reading the netfilter log group's answer")?;
    let answer = NetlinkMessage::<NetfilterMessage>::deserialize(&reply[..n])
        .context("the netfilter log group's answer")?;
    match answer.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => {
            bail!("configuring the netfilter log group: {}", e.to_io())
        }
        _ => Ok(()),
    }
}

/// Logs every packet the kernel reports on `fd`, on a thread of its own (a blocking read:
/// the descriptor needs no registration with the runtime), until the policy point ends.
pub fn serve(fd: OwnedFd, shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("refused-packets".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match recv(fd.as_raw_fd(), &mut buffer, MsgFlags::empty()) {
                    Ok(n) => {
                        for payload in payloads(&buffer[..n]) {
                            if let Some((what, dest)) = describe(&payload, &shared.names) {
                                shared.refuse(&what, dest, REASON.into(), None);
                            }
                        }
                    }
                    // ENOBUFS: the kernel dropped reports in a flood (the socket's buffer is
                    // the bound); the next read goes on.
                    Err(nix::errno::Errno::ENOBUFS | nix::errno::Errno::EINTR) => continue,
                    Err(_) => return,
                }
            }
        })
        .map(drop)
}

const REASON: &str =
    "only TCP (through the policy point) and DNS (to its stub) leave the namespace";

/// The packet payloads of the netlink messages in one datagram.
fn payloads(mut datagram: &[u8]) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    while let Ok(buffer) = NetlinkBuffer::new_checked(datagram) {
        let length = (buffer.length() as usize).max(16);
        let Some(message) = datagram.get(..length) else {
            break;
        };
        if let Ok(message) = NetlinkMessage::<NetfilterMessage>::deserialize(message) {
            if let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                ..
            }) = message.payload
            {
                found.extend(nlas.into_iter().filter_map(|nla| match nla {
                    PacketNla::Payload(bytes) => Some(bytes),
                    _ => None,
                }));
            }
        }
        // Netlink messages are 4-byte aligned.
        let next = length.div_ceil(4) * 4;
        datagram = datagram.get(next..).unwrap_or_default();
    }
    found
}

/// What the packet was and where it went: ("udp", "name:443") for a datagram to an address
/// the DNS stub handed out, ("udp", "192.0.2.1:123"), ("icmp", "192.0.2.1").
fn describe(packet: &[u8], names: &Names) -> Option<(String, String)> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let (destination, protocol): (IpAddr, u8) = match sliced.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().destination_addr().into(),
            ip.header().protocol().0,
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().destination_addr().into(),
            ip.payload().ip_number.0,
        ),
        _ => return None,
    };
    let host = names
        .name_of(destination)
        .unwrap_or_else(|| destination.to_string());
    let with_port = |port: u16| match destination {
        IpAddr::V6(_) if host == destination.to_string() => {
            SocketAddr::new(destination, port).to_string()
        }
        _ => format!("{host}:{port}"),
    };
    Some(match sliced.transport {
        Some(TransportSlice::Udp(udp)) => ("udp".into(), with_port(udp.destination_port())),
        Some(TransportSlice::Tcp(tcp)) => ("tcp".into(), with_port(tcp.destination_port())),
        Some(TransportSlice::Icmpv4(_)) | Some(TransportSlice::Icmpv6(_)) => ("icmp".into(), host),
        _ => (format!("ip protocol {protocol}"), host),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(dst: [u8; 4], port: u16) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ipv4([198, 18, 0, 0], dst, 64).udp(40000, port);
        let mut packet = Vec::new();
        builder.write(&mut packet, b"quic?").unwrap();
        packet
    }

    #[test]
    fn a_datagram_is_described_by_protocol_address_and_port() {
        let names = Names::default();
        assert_eq!(
            describe(&udp4([192, 0, 2, 1], 443), &names),
            Some(("udp".into(), "192.0.2.1:443".into()))
        );
        let builder = etherparse::PacketBuilder::ipv6(
            [0; 16],
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            64,
        )
        .icmpv6_echo_request(1, 1);
        let mut ping6 = Vec::new();
        builder.write(&mut ping6, b"").unwrap();
        assert_eq!(
            describe(&ping6, &names),
            Some(("icmp".into(), "2001:db8::1".into()))
        );
        // Truncated or garbage: nothing, never a panic.
        assert_eq!(describe(&udp4([192, 0, 2, 1], 443)[..10], &names), None);
        assert_eq!(describe(b"\xff\x00garbage", &names), None);
    }
}
