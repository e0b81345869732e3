//! The agent's network namespace in `allowlist` mode: loopback, default routes through
//! loopback (so every connection reaches netfilter instead of failing "unreachable"), and a
//! netfilter ruleset that delivers every TCP connection to a non-loopback address to the
//! policy point's capture port and every DNS datagram to its stub. The namespace has no other
//! interface: nothing the agent sends (UDP, ICMP, raw packets) can leave it except through
//! the policy point's sockets; what is still addressed outside it after the capture is
//! dropped and reported to the policy point ([`super::nflog`]).
//!
//! The ruleset goes to the kernel over netlink as one nf_tables transaction (a batch: all of
//! it or nothing), encoded with netlink-bindings' typed nf_tables messages. Running nft(8)
//! instead cost a fork, an exec, its dynamic libraries and its parser on every run's
//! critical path (design.md section 8).
#![forbid(unsafe_code)]

use std::ffi::CStr;
use std::net::Ipv6Addr;

use anyhow::{Context, Result, anyhow};
use netlink_bindings::nftables::{
    Chained, CmpOps, FibFlags, MetaKeys, NatRangeFlags, Nfgenmsg, PayloadBase, PushExprListAttrs,
    PushRuleAttrs, Registers, VerdictCode,
};
use netlink_bindings::traits::Pusher;

use super::nflog::GROUP;
use super::{CAPTURE_PORT, DNS_PORT};

/// The agent's own address for connections through loopback: the first address of the DNS
/// stub's synthetic range, which the stub never hands out.
const SOURCE_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 0);

const TABLE: &CStr = c"agentuser";
const CHAIN: &CStr = c"capture";
/// The chain that drops (and reports) what is still addressed outside the namespace after
/// the capture: UDP other than DNS, ICMP, any other protocol.
const LEAVE_CHAIN: &CStr = c"leave";

// The kernel's constants from libc (as the integer types the bindings take), except the one
// libc lacks.
/// The output hook.
const HOOK_OUTPUT: u32 = libc::NF_INET_LOCAL_OUT as u32;
/// Where nft's `priority -100` (dstnat) puts a nat chain.
const PRIORITY_DSTNAT: i32 = libc::NF_IP_PRI_NAT_DST;
/// A filter chain's priority, after the nat chain rewrote addresses.
const PRIORITY_FILTER: i32 = libc::NF_IP_PRI_FILTER;
/// `NFT_FIB_RESULT_ADDRTYPE` of <linux/netfilter/nf_tables.h> (not in libc; netlink-bindings'
/// FibResult leaves out NFT_FIB_RESULT_UNSPEC and is off by one).
const FIB_RESULT_ADDRTYPE: u32 = 3;
/// An address of this namespace (loopback, the agent's source address, and a connection
/// the capture chain rewrote to the policy point).
const RTN_LOCAL: u32 = libc::RTN_LOCAL as u32;
const NAT_DNAT: u32 = libc::NFT_NAT_DNAT as u32;
const NFPROTO_INET: u8 = libc::NFPROTO_INET as u8;
const NFPROTO_IPV4: u8 = libc::NFPROTO_IPV4 as u8;
const NFPROTO_IPV6: u8 = libc::NFPROTO_IPV6 as u8;
/// A batch's res_id names the subsystem it is for.
const SUBSYS_NFTABLES: u16 = libc::NFNL_SUBSYS_NFTABLES as u16;
const UDP: u8 = libc::IPPROTO_UDP as u8;
const TCP: u8 = libc::IPPROTO_TCP as u8;

/// One rule of the capture chain, for one address family.
struct Rule {
    ipv6: bool,
    tests: &'static [Test],
    action: Action,
}

enum Test {
    /// `meta l4proto`.
    Protocol(u8),
    /// The transport header's destination port.
    DestinationPort(u16),
    /// The first bytes of the destination address (a prefix on a byte boundary).
    DestinationPrefix(&'static [u8]),
}

enum Action {
    /// Leave the chain: the connection stays inside the namespace.
    Return,
    /// To the policy point's port on loopback (127.0.0.1 or ::1) in the namespace: what
    /// nft's `redirect to :PORT` does in an output chain (the kernel's nf_nat_redirect
    /// rewrites to exactly these addresses there). netlink-bindings' specification has no
    /// `redir` expression, so it is spelled as the equivalent `dnat`.
    Redirect(u16),
}

const IPV6_LOOPBACK: [u8; 16] = Ipv6Addr::LOCALHOST.octets();

/// The capture chain, in order. In nft(8) syntax (an `inet` table, a `nat` chain on the
/// output hook at priority -100, policy accept):
///
/// ```text
/// udp dport 53 redirect to :53            (both families: DNS to any address, 127.0.0.53 too)
/// ip daddr 127.0.0.0/8 return             (the agent's own loopback stays its own)
/// ip6 daddr ::1 return
/// meta l4proto tcp redirect to :3129      (both families: every other TCP connection)
/// ```
const RULES: [Rule; 6] = [
    Rule {
        ipv6: false,
        tests: &[Test::Protocol(UDP), Test::DestinationPort(53)],
        action: Action::Redirect(DNS_PORT),
    },
    Rule {
        ipv6: true,
        tests: &[Test::Protocol(UDP), Test::DestinationPort(53)],
        action: Action::Redirect(DNS_PORT),
    },
    Rule {
        ipv6: false,
        tests: &[Test::DestinationPrefix(&[127])],
        action: Action::Return,
    },
    Rule {
        ipv6: true,
        tests: &[Test::DestinationPrefix(&IPV6_LOOPBACK)],
        action: Action::Return,
    },
    Rule {
        ipv6: false,
        tests: &[Test::Protocol(TCP)],
        action: Action::Redirect(CAPTURE_PORT),
    },
    Rule {
        ipv6: true,
        tests: &[Test::Protocol(TCP)],
        action: Action::Redirect(CAPTURE_PORT),
    },
];

/// Configures the current (new, empty) network namespace. Runs as root, before the
/// listeners are bound.
pub fn configure() -> Result<()> {
    crate::sys::spawn::loopback_up().context("bringing up loopback")?;
    crate::sys::net::loopback_source_address(SOURCE_ADDRESS)?;
    crate::sys::net::default_routes_via_loopback()?;
    no_pacing();
    load_ruleset()
}

/// Every TCP connection in the namespace is a loopback one (the agent's to the policy
/// point, or among its own processes), and a lossless hop gains nothing from congestion
/// control, but it pays for pacing: with the host's default of BBR (common, and this
/// machine's) and no fq qdisc, TCP paces each socket by hrtimer, which cost a 1 GiB
/// download through the policy point a third of its throughput (bench/results/network.md).
/// Reno never paces, and is always built in and allowed. The upstream connections are made
/// in the host's namespace, with the host's algorithm, as a direct connection would be.
///
/// Best effort: where /proc/sys is read-only (some container managers mount it so) the
/// namespace keeps the host's algorithm, which is slower, not less safe; a run does not
/// fail for it.
pub(super) fn no_pacing() {
    const DEFAULT_ALGORITHM: &str = "/proc/sys/net/ipv4/tcp_congestion_control";
    let _ = std::fs::write(DEFAULT_ALGORITHM, "reno");
}

/// Sends the table, its chain and its rules as one transaction and waits for the kernel's
/// acknowledgement of each.
fn load_ruleset() -> Result<()> {
    let mut socket = netlink_socket2::NetlinkSocket::new();
    let first_seq = socket.reserve_seq(2 + 2 + RULES.len() as u32 + 3);
    let batch = transaction(first_seq).finalize();
    let loaded = match socket.request_chained(&batch) {
        Ok(mut replies) => replies.recv_all().map_err(|e| anyhow!("{e}")),
        Err(e) => Err(anyhow!("{e}")),
    };
    loaded.context("loading the netfilter ruleset over netlink")
}

fn transaction(first_seq: u32) -> Chained<'static> {
    let mut batch = Chained::new(first_seq);
    let mut begin = Nfgenmsg::new();
    begin.set_res_id(SUBSYS_NFTABLES);
    batch.request().op_batch_begin_do(&begin);
    let inet = Nfgenmsg {
        nfgen_family: NFPROTO_INET,
        ..Default::default()
    };
    batch
        .request()
        .set_create()
        .op_newtable_do(&inet)
        .encode()
        .push_name(TABLE);
    batch
        .request()
        .set_create()
        .op_newchain_do(&inet)
        .encode()
        .push_table(TABLE)
        .push_name(CHAIN)
        .push_type(c"nat")
        .push_policy(VerdictCode::Accept as u32)
        .nested_hook()
        .push_num(HOOK_OUTPUT)
        .push_priority(PRIORITY_DSTNAT)
        .end_nested();
    for rule in &RULES {
        append_rule(&mut batch, &inet, CHAIN, |exprs| encode_rule(exprs, rule));
    }
    leave_chain(&mut batch, &inet);
    batch.request().op_batch_end_do(&begin);
    batch
}

/// The leave chain (nft syntax: a `filter` chain on the output hook at priority 0, policy
/// accept):
///
/// ```text
/// fib daddr type local accept     (loopback, and what the capture chain sent to the point)
/// log group 7 drop                (everything else: reported to the policy point, dropped)
/// ```
fn leave_chain(batch: &mut Chained<'static>, inet: &Nfgenmsg) {
    batch
        .request()
        .set_create()
        .op_newchain_do(inet)
        .encode()
        .push_table(TABLE)
        .push_name(LEAVE_CHAIN)
        .push_type(c"filter")
        .push_policy(VerdictCode::Accept as u32)
        .nested_hook()
        .push_num(HOOK_OUTPUT)
        .push_priority(PRIORITY_FILTER)
        .end_nested();
    append_rule(batch, inet, LEAVE_CHAIN, |exprs| {
        let exprs = exprs
            .nested_elem()
            .nested_data_fib()
            .push_dreg(Registers::Reg1 as u32)
            .push_result(FIB_RESULT_ADDRTYPE)
            .push_flags(FibFlags::Daddr as u32)
            .end_nested()
            .end_nested();
        verdict(
            compare(exprs, &RTN_LOCAL.to_ne_bytes()),
            VerdictCode::Accept,
        )
    });
    append_rule(batch, inet, LEAVE_CHAIN, |exprs| {
        let exprs = exprs
            .nested_elem()
            .nested_data_log()
            .push_group(GROUP)
            .end_nested()
            .end_nested();
        verdict(exprs, VerdictCode::Drop)
    });
}

/// A rule's expression list, as [`append_rule`] hands it to the code that fills it.
type ExprList<'b> = PushExprListAttrs<PushRuleAttrs<&'b mut Vec<u8>>>;

/// Appends a rule to `chain` of the table, its expressions written by `body`.
fn append_rule(
    batch: &mut Chained<'static>,
    inet: &Nfgenmsg,
    chain: &CStr,
    body: impl for<'b> FnOnce(ExprList<'b>) -> ExprList<'b>,
) {
    let mut request = batch
        .request()
        .set_create()
        .set_append()
        .op_newrule_do(inet);
    let exprs = request
        .encode()
        .push_table(TABLE)
        .push_chain(chain)
        .nested_expressions();
    body(exprs).end_nested();
}

/// Ends the rule with `code` (accept, drop, return).
fn verdict<P: Pusher>(exprs: PushExprListAttrs<P>, code: VerdictCode) -> PushExprListAttrs<P> {
    exprs
        .nested_elem()
        .nested_data_immediate()
        .push_dreg(Registers::RegVerdict as u32)
        .nested_data()
        .nested_verdict()
        .push_code(code as u32)
        .end_nested()
        .end_nested()
        .end_nested()
        .end_nested()
}

/// Appends one rule's expressions: the family, the tests, the action.
fn encode_rule<P: Pusher>(exprs: PushExprListAttrs<P>, rule: &Rule) -> PushExprListAttrs<P> {
    let family = if rule.ipv6 {
        NFPROTO_IPV6
    } else {
        NFPROTO_IPV4
    };
    let mut exprs = load_meta(exprs, MetaKeys::Nfproto);
    exprs = compare(exprs, &[family]);
    for test in rule.tests {
        exprs = match test {
            Test::Protocol(protocol) => compare(load_meta(exprs, MetaKeys::L4Proto), &[*protocol]),
            Test::DestinationPort(port) => {
                // The destination port is at offset 2 of both the UDP and the TCP header.
                let loaded = load_payload(exprs, PayloadBase::TransportHeader, 2, 2);
                compare(loaded, &port.to_be_bytes())
            }
            Test::DestinationPrefix(prefix) => {
                // The destination address: offset 16 of the IPv4 header, 24 of the IPv6 one.
                let offset = if rule.ipv6 { 24 } else { 16 };
                let loaded = load_payload(exprs, PayloadBase::NetworkHeader, offset, prefix.len());
                compare(loaded, prefix)
            }
        };
    }
    match rule.action {
        Action::Return => verdict(exprs, VerdictCode::Return),
        Action::Redirect(port) => {
            let loopback: &[u8] = if rule.ipv6 {
                &IPV6_LOOPBACK
            } else {
                &[127, 0, 0, 1]
            };
            let exprs = immediate(exprs, Registers::Reg1, loopback);
            let exprs = immediate(exprs, Registers::Reg2, &port.to_be_bytes());
            let family = if rule.ipv6 {
                NFPROTO_IPV6
            } else {
                NFPROTO_IPV4
            };
            exprs
                .nested_elem()
                .nested_data_nat()
                .push_type(NAT_DNAT)
                .push_family(u32::from(family))
                .push_reg_addr_min(Registers::Reg1 as u32)
                .push_reg_proto_min(Registers::Reg2 as u32)
                .push_flags(NatRangeFlags::MapIps as u32 | NatRangeFlags::ProtoSpecified as u32)
                .end_nested()
                .end_nested()
        }
    }
}

fn load_meta<P: Pusher>(exprs: PushExprListAttrs<P>, key: MetaKeys) -> PushExprListAttrs<P> {
    exprs
        .nested_elem()
        .nested_data_meta()
        .push_key(key as u32)
        .push_dreg(Registers::Reg1 as u32)
        .end_nested()
        .end_nested()
}

fn load_payload<P: Pusher>(
    exprs: PushExprListAttrs<P>,
    base: PayloadBase,
    offset: u32,
    len: usize,
) -> PushExprListAttrs<P> {
    exprs
        .nested_elem()
        .nested_data_payload()
        .push_dreg(Registers::Reg1 as u32)
        .push_base(base as u32)
        .push_offset(offset)
        .push_len(len as u32)
        .end_nested()
        .end_nested()
}

/// Register 1 must equal `value`, or the rule ends here.
fn compare<P: Pusher>(exprs: PushExprListAttrs<P>, value: &[u8]) -> PushExprListAttrs<P> {
    exprs
        .nested_elem()
        .nested_data_cmp()
        .push_sreg(Registers::Reg1 as u32)
        .push_op(CmpOps::Eq as u32)
        .nested_data()
        .push_value(value)
        .end_nested()
        .end_nested()
        .end_nested()
}

fn immediate<P: Pusher>(
    exprs: PushExprListAttrs<P>,
    register: Registers,
    value: &[u8],
) -> PushExprListAttrs<P> {
    exprs
        .nested_elem()
        .nested_data_immediate()
        .push_dreg(register as u32)
        .nested_data()
        .push_value(value)
        .end_nested()
        .end_nested()
        .end_nested()
}

#[cfg(test)]
mod tests {
    /// The ruleset the kernel holds after the netlink batch, as nft(8) prints it: the same
    /// decisions as the text ruleset nft loaded before (`redirect to :PORT` is spelled
    /// `dnat ip to 127.0.0.1:PORT` / `dnat ip6 to [::1]:PORT`). Loaded in a network
    /// namespace of this test thread's own.
    /// Connections made or accepted in the configured namespace (as the policy point's
    /// listeners accept the agent's) take its default algorithm, which does not pace:
    /// Reno, whatever the host's default.
    #[test]
    fn connections_in_the_namespace_do_not_pace() {
        let algorithm = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            super::configure().expect("configuring the namespace");
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").expect("read")
        })
        .join()
        .expect("test thread");
        assert_eq!(algorithm.trim(), "reno");
    }

    #[test]
    fn the_kernel_holds_the_capture_ruleset() {
        let listed = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            super::load_ruleset().expect("loading the ruleset");
            let out = std::process::Command::new("nft")
                .args(["list", "table", "inet", "agentuser"])
                .output()
                .expect("nft (apt-get install nftables) lists the table");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).expect("utf-8")
        })
        .join()
        .expect("test thread");
        let rules: Vec<&str> = listed.lines().map(str::trim).collect();
        assert_eq!(
            rules,
            [
                "table inet agentuser {",
                "chain capture {",
                "type nat hook output priority -100; policy accept;",
                "meta nfproto ipv4 udp dport 53 dnat ip to 127.0.0.1:53",
                "meta nfproto ipv6 udp dport 53 dnat ip6 to [::1]:53",
                "ip daddr 127.0.0.0/8 return",
                "ip6 daddr ::1 return",
                "meta nfproto ipv4 meta l4proto tcp dnat ip to 127.0.0.1:3129",
                "meta nfproto ipv6 meta l4proto tcp dnat ip6 to [::1]:3129",
                "}",
                "",
                "chain leave {",
                "type filter hook output priority filter; policy accept;",
                "fib daddr type local accept",
                "log group 7 drop",
                "}",
                "}",
            ],
            "{listed}"
        );
    }
}
