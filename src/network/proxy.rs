//! What the policy point does with each connection (docs/design.md section 8). Three ways in, one
//! decision, one way out:
//!
//! - the HTTP proxy (`HTTP_PROXY`, 127.0.0.1:3128 in the view): CONNECT tunnels and
//!   absolute-form plain-HTTP requests, served with hyper;
//! - transparent capture: every other TCP connection of the agent's namespace, redirected by
//!   netfilter; its original destination (SO_ORIGINAL_DST) is a synthetic address from the
//!   DNS stub, mapped back to its name, or a raw address;
//! - the DNS stub ([`super::dns`]) and `localhost:PORT` forwards.
//!
//! [`Shared::open`] decides: the allowlist, then (for names) resolution with the host's
//! resolver and refusal of non-public answers, then the connection. A tunnel to a name
//! checks the TLS server name of the client's first message ([`super::tls`]). Issue 13
//! plugs in here: a bound host's tunnel becomes a TLS-terminating one (`relay` is the
//! place), and an ssh-agent socket is one more listener.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::net::{TcpListener, TcpStream, UdpSocket, tcp};

use super::allowlist::{Allowlist, DEFAULT_PORTS, Grant, Host, is_public};
use super::dns::{self, Names};
use super::log::{self, Refusal};
use super::tls::{self, Hello};
use super::upstream::{self, Upstream, UpstreamProxy};

/// Copy buffer per direction: large enough that a bulk transfer is not syscall-bound.
const COPY_BUFFER: usize = 128 * 1024;

/// Everything the connections of one run share.
pub struct Shared {
    pub run: String,
    pub allowlist: Allowlist,
    pub names: Names,
    pub upstream: Option<UpstreamProxy>,
    /// `caller=... uid=... agent=...`, the prefix of every syslog record (as eventlog's).
    pub syslog_prefix: String,
    pub log: std::sync::Mutex<std::fs::File>,
    pub logged: AtomicU32,
    /// Brokered secrets and the run's CA (issue 13), set by the policy point itself.
    pub broker: Option<crate::broker::Broker>,
}

/// Why a connection was not made.
pub enum OpenError {
    /// The policy refused it (logged).
    Refused(Refusal),
    /// Allowed, but the destination could not be reached.
    Failed(String),
}

impl Shared {
    pub fn log_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_raw_fd()
    }

    /// Records a refusal: the agent's log and syslog, at most `log::MAX_PER_RUN` per run.
    pub fn refuse(&self, what: &str, dest: String, reason: String, allow: Option<String>) {
        let n = self.logged.fetch_add(1, Ordering::Relaxed);
        if n > log::MAX_PER_RUN {
            return;
        }
        let refusal = Refusal {
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            run: self.run.clone(),
            what: what.into(),
            dest: log::printable(&dest),
            reason: if n == log::MAX_PER_RUN {
                "further refusals of this run are not logged".into()
            } else {
                reason
            },
            allow,
        };
        crate::sys::syslog::notice(&format!(
            "{} action=net-refused what={} dest={:?} reason={:?}",
            self.syslog_prefix, refusal.what, refusal.dest, refusal.reason
        ));
        let mut file = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log::append(&mut file, &refusal);
    }

    fn refused(&self, what: &str, host: &Host, port: u16, reason: &str) -> OpenError {
        let dest = format!("{host}:{port}");
        let allow = match host {
            Host::Name(name) if name != "localhost" && DEFAULT_PORTS.contains(&port) => {
                Some(name.clone())
            }
            _ => Some(dest.clone()),
        };
        self.refuse(what, dest.clone(), reason.into(), allow.clone());
        OpenError::Refused(Refusal {
            time: 0,
            run: String::new(),
            what: what.into(),
            dest,
            reason: reason.into(),
            allow,
        })
    }

    /// Connects to `host:port` for the agent if the allowlist allows it.
    pub async fn open(&self, host: &Host, port: u16) -> Result<Upstream, OpenError> {
        let Some(grant) = self.allowlist.check(host, port) else {
            return Err(self.refused("connect", host, port, "not in the allowlist"));
        };
        let failed = |e: std::io::Error| OpenError::Failed(format!("{host}:{port}: {e}"));
        match grant {
            Grant::Localhost => {
                let v4 = SocketAddr::from(([127, 0, 0, 1], port));
                match upstream::direct(v4).await {
                    Ok(s) => Ok(s),
                    Err(_) => {
                        upstream::direct(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
                            .await
                            .map_err(failed)
                    }
                }
            }
            Grant::Address(addr) => match &self.upstream {
                Some(proxy) => proxy.connect(&format!("{host}:{port}")).await,
                None => upstream::direct(SocketAddr::new(addr, port)).await,
            }
            .map_err(failed),
            Grant::PublicName => {
                let Host::Name(name) = host else {
                    return Err(OpenError::Failed("not a name".into()));
                };
                if let Some(proxy) = &self.upstream {
                    // The upstream proxy resolves the name (the host's own policy).
                    return proxy
                        .connect(&format!("{name}:{port}"))
                        .await
                        .map_err(failed);
                }
                self.open_public(host, name, port).await
            }
        }
    }

    /// Resolves `name` with the host's resolver and connects to a public address of it.
    async fn open_public(&self, host: &Host, name: &str, port: u16) -> Result<Upstream, OpenError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| OpenError::Failed(format!("{name}: {e}")))?
            .collect();
        let (public, private): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addrs.into_iter().partition(|a| is_public(a.ip()));
        if public.is_empty() {
            let Some(first) = private.first() else {
                return Err(OpenError::Failed(format!("{name}: no address")));
            };
            let reason = format!(
                "resolves to the non-public address {} (allowed only when the entry names the address)",
                first.ip()
            );
            let dest = format!("{host}:{port}");
            let entry = Host::Address(first.ip());
            self.refuse(
                "connect",
                dest.clone(),
                reason.clone(),
                Some(format!("{entry}:{port}")),
            );
            return Err(OpenError::Refused(Refusal {
                time: 0,
                run: String::new(),
                what: "connect".into(),
                dest,
                reason,
                allow: None,
            }));
        }
        let mut last = None;
        for addr in public {
            match upstream::direct(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(OpenError::Failed(format!(
            "{name}:{port}: {}",
            last.map_or("no address".into(), |e| e.to_string())
        )))
    }
}

/// The agent's side of a connection: its socket, and what was read from it already (hyper
/// may read past a CONNECT request when the client sends its first bytes right behind it).
pub struct Client {
    pub stream: TcpStream,
    pub read_ahead: Bytes,
}

/// Relays both directions until both are closed; each direction that reaches end of file
/// shuts the other side's write half (half-close passes through). When `name` is set (a
/// connection made for a name), a TLS ClientHello from the client must carry that server
/// name; anything that does not look like TLS passes (ssh, plain HTTP, other protocols to an
/// allowed port). With brokered secrets, TLS to a bound name is terminated
/// ([`crate::broker::intercept`]), and a stream that is not TLS is scanned for placeholders.
/// Everything else is an untouched tunnel, spliced in the kernel when the destination is a
/// direct TCP connection ([`super::splice`]).
pub async fn relay(shared: &Shared, client: Client, upstream: Upstream, name: Option<(&str, u16)>) {
    let broker = shared.broker.as_ref().filter(|b| !b.secrets.is_empty());
    let (mut client_r, client_w) = client.stream.into_split();
    let mut read_ahead = client.read_ahead.to_vec();
    // A bound name: the client speaks first (TLS or HTTP), so its first bytes are read
    // before anything else to decide whether to terminate TLS.
    let mut first = None;
    if let (Some(broker), Some((name, port))) = (broker, name) {
        if broker.secrets.binds(name) {
            let Ok(bytes) = first_bytes(std::mem::take(&mut read_ahead), &mut client_r).await
            else {
                return;
            };
            if let Err(reason) = check_hello(&bytes, name) {
                shared.refuse("connect", format!("{name}:{port}"), reason, None);
                return;
            }
            if tls::inspect(&bytes) != Hello::NotTls {
                let reader = std::io::Cursor::new(bytes).chain(client_r);
                let client = tokio::io::join(reader, client_w);
                let refuse = |dest: String, reason: String| {
                    shared.refuse("secret", dest, reason, None);
                };
                crate::broker::intercept::serve(broker, &refuse, client, upstream, name, port)
                    .await;
                return;
            }
            first = Some(bytes);
        }
    }
    let tunnel = Tunnel {
        shared,
        broker,
        name,
        first,
        read_ahead,
        client_r,
        client_w,
    };
    match upstream.into_tcp() {
        Ok(tcp) => {
            let (read, write) = tcp.into_split();
            tunnel.run(read, write).await;
        }
        Err(stream) => {
            let (read, write) = tokio::io::split(stream);
            tunnel.run(read, write).await;
        }
    }
}

/// A connection that is not terminated here: checked (SNI), maybe scanned, else relayed
/// untouched.
struct Tunnel<'a> {
    shared: &'a Shared,
    broker: Option<&'a crate::broker::Broker>,
    name: Option<(&'a str, u16)>,
    /// The client's first bytes, when a bound name made the relay read them already.
    first: Option<Vec<u8>>,
    read_ahead: Vec<u8>,
    client_r: tcp::OwnedReadHalf,
    client_w: tcp::OwnedWriteHalf,
}

impl Tunnel<'_> {
    async fn run<R, W>(self, mut upstream_r: R, mut upstream_w: W)
    where
        R: AsyncRead + Unpin + Side,
        W: AsyncWrite + Unpin + Side,
    {
        let Tunnel {
            shared,
            broker,
            name,
            first,
            read_ahead,
            mut client_r,
            mut client_w,
        } = self;
        let down = pump(&mut upstream_r, &mut client_w);
        let up = async {
            let first = match (first, name) {
                (Some(first), _) => first,
                (None, Some((name, port))) => {
                    let first = first_bytes(read_ahead, &mut client_r).await?;
                    if let Err(reason) = check_hello(&first, name) {
                        shared.refuse("connect", format!("{name}:{port}"), reason, None);
                        return Err(());
                    }
                    first
                }
                (None, None) => read_ahead,
            };
            let scan = broker.filter(|_| tls::inspect(&first) == Hello::NotTls || first.is_empty());
            let dest = name.map_or_else(|| "a raw address".to_owned(), |(n, p)| format!("{n}:{p}"));
            if let Some(broker) = scan {
                scanned_copy(shared, broker, &dest, first, &mut client_r, &mut upstream_w).await?;
                let _ = upstream_w.shutdown().await;
            } else {
                upstream_w.write_all(&first).await.map_err(drop)?;
                pump(&mut client_r, &mut upstream_w).await;
            }
            Ok(())
        };
        tokio::pin!(up, down);
        tokio::select! {
            result = &mut up => {
                if result.is_ok() {
                    down.await;
                }
            }
            () = &mut down => {
                let _ = up.await;
            }
        }
    }
}

/// A half of a stream, which may be a TCP socket's.
trait Side {
    fn tcp(&self) -> Option<&TcpStream>;
}

impl Side for tcp::OwnedReadHalf {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl Side for tcp::OwnedWriteHalf {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl<T> Side for ReadHalf<T> {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl<T> Side for WriteHalf<T> {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

/// Copies `from` to `to` until `from` ends (or either fails), then shuts down `to`'s write
/// side, so the peer sees the same end of file. Between two TCP sockets the bytes are
/// spliced in the kernel (if a pipe can be had); otherwise copied through a buffer.
async fn pump<R, W>(from: &mut R, to: &mut W)
where
    R: AsyncRead + Unpin + Side,
    W: AsyncWrite + Unpin + Side,
{
    let sockets = from.tcp().zip(to.tcp());
    if let Some((source, _)) = sockets {
        // The pipe only once there is something to move: an idle connection holds none of
        // agentuser-net's pipe budget.
        let _ = source.readable().await;
    }
    let pipe = sockets.and_then(|_| super::splice::Pipe::new().ok());
    if let (Some((source, sink)), Some(pipe)) = (sockets, pipe) {
        let _ = pipe.copy(source, sink).await;
    } else {
        let mut reader = BufReader::with_capacity(COPY_BUFFER, from);
        let _ = tokio::io::copy_buf(&mut reader, to).await;
    }
    let _ = to.shutdown().await;
}

/// Copies a stream that is not TLS, refusing it (closing both ways) when a placeholder goes
/// by: a brokered value is only ever sent over TLS to a bound host. A placeholder split
/// across reads is caught by keeping the tail of the previous chunk.
async fn scanned_copy<R, W>(
    shared: &Shared,
    broker: &crate::broker::Broker,
    dest: &str,
    first: Vec<u8>,
    reader: &mut R,
    writer: &mut W,
) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let keep = broker.secrets.longest().saturating_sub(1);
    let mut window: Vec<u8> = Vec::with_capacity(COPY_BUFFER + keep);
    let mut chunk = first;
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let tail = window.len().saturating_sub(keep);
        window.drain(..tail);
        window.extend_from_slice(&chunk);
        if let Some(secret) = broker.secrets.find(&window) {
            let leak = crate::broker::Leak {
                var: secret.var.clone(),
            };
            let reason = crate::broker::intercept::leak_reason(&leak, "a stream that is not TLS");
            shared.refuse("secret", dest.to_owned(), reason, None);
            return Err(());
        }
        writer.write_all(&chunk).await.map_err(drop)?;
        let n = reader.read(&mut buf).await.map_err(drop)?;
        if n == 0 {
            return Ok(());
        }
        chunk = buf[..n].to_vec();
    }
}

/// Reads until the first bytes can be classified (a complete ClientHello, or not TLS),
/// starting from what was read already.
async fn first_bytes<R: AsyncRead + Unpin>(
    mut buf: Vec<u8>,
    reader: &mut R,
) -> Result<Vec<u8>, ()> {
    loop {
        if !buf.is_empty() && tls::inspect(&buf) != Hello::Incomplete {
            return Ok(buf);
        }
        let mut chunk = [0u8; 4096];
        let n = reader.read(&mut chunk).await.map_err(drop)?;
        if n == 0 {
            return if buf.is_empty() { Err(()) } else { Ok(buf) };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn check_hello(first: &[u8], name: &str) -> Result<(), String> {
    match tls::inspect(first) {
        Hello::NotTls => Ok(()),
        Hello::Sni(Some(sni)) if sni == name => Ok(()),
        Hello::Sni(Some(sni)) => Err(format!(
            "TLS server name {} is not the name connected to",
            log::printable(&sni)
        )),
        Hello::Sni(None) => Err("TLS without a server name".into()),
        Hello::Malformed | Hello::Incomplete => Err("malformed TLS ClientHello".into()),
    }
}

/// Accepts forever; a failing accept (out of descriptors) pauses instead of spinning.
async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// Transparently captured connections.
pub async fn serve_capture(listener: TcpListener, shared: Arc<Shared>, ipv6: bool) {
    loop {
        let stream = accept(&listener).await;
        let shared = shared.clone();
        tokio::spawn(async move { captured(stream, &shared, ipv6).await });
    }
}

async fn captured(stream: TcpStream, shared: &Shared, ipv6: bool) {
    use std::os::fd::AsFd;
    let Ok(original) = crate::sys::net::original_destination(stream.as_fd(), ipv6) else {
        return;
    };
    let port = original.port();
    let host = if Names::is_synthetic(original.ip()) {
        match shared.names.name_of(original.ip()) {
            Some(name) => Host::Name(name),
            None => {
                let dest = format!("{}:{port}", original.ip());
                shared.refuse(
                    "connect",
                    dest,
                    "not an address the DNS stub gave".into(),
                    None,
                );
                return;
            }
        }
    } else {
        Host::Address(original.ip())
    };
    let Ok(upstream) = shared.open(&host, port).await else {
        return;
    };
    let name = match &host {
        Host::Name(n) => Some((n.as_str(), port)),
        Host::Address(_) => None,
    };
    let client = Client {
        stream,
        read_ahead: Bytes::new(),
    };
    relay(shared, client, upstream, name).await;
}

/// The DNS stub on one socket.
pub async fn serve_dns(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let (reply, outcome) = dns::answer(&buf[..len], &shared.allowlist, &shared.names);
        if let dns::Outcome::Refused { name, kind } = outcome {
            shared.refuse(
                "dns",
                name.clone(),
                format!("{kind} query for a name not in the allowlist (never resolved)"),
                Some(name),
            );
        }
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

/// A fixed forward: `localhost:PORT` into the view, or `--publish PORT` out of it. Plain
/// TCP between two loopback sockets, spliced both ways ([`pump`]: the end of one direction
/// shuts the other side's write half).
pub async fn serve_forward(listener: TcpListener, target: SocketAddr) {
    loop {
        let stream = accept(&listener).await;
        tokio::spawn(async move {
            let Ok(upstream) = TcpStream::connect(target).await else {
                return;
            };
            let _ = upstream.set_nodelay(true);
            // One end of each forward is on the host's loopback, whose sockets take the
            // host's algorithm: no pacing on this hop either.
            crate::sys::net::without_pacing(stream.as_fd());
            crate::sys::net::without_pacing(upstream.as_fd());
            let (mut client_r, mut client_w) = stream.into_split();
            let (mut target_r, mut target_w) = upstream.into_split();
            tokio::join!(
                pump(&mut client_r, &mut target_w),
                pump(&mut target_r, &mut client_w)
            );
        });
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// A plain-HTTP request carrying a placeholder (in its URL or a header) is refused and
/// logged: brokered values go over TLS to bound hosts only.
fn placeholder_in_plain_request(
    shared: &Shared,
    req: &Request<Incoming>,
    dest: &str,
) -> Option<Response<Body>> {
    let broker = shared.broker.as_ref()?;
    let uri = req.uri().to_string();
    let found = broker.secrets.find(uri.as_bytes()).or_else(|| {
        req.headers()
            .values()
            .find_map(|v| broker.secrets.find_in_header(v.as_bytes()))
    })?;
    let leak = crate::broker::Leak {
        var: found.var.clone(),
    };
    let reason = crate::broker::intercept::leak_reason(&leak, "a plain-HTTP request");
    shared.refuse("secret", dest.to_owned(), reason.clone(), None);
    Some(crate::broker::intercept::text(
        StatusCode::FORBIDDEN,
        reason,
    ))
}

/// The HTTP proxy.
pub async fn serve_proxy(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = accept(&listener).await;
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, hyper::Error>(proxy_request(req, shared).await) }
            });
            // A malformed request ends this connection only.
            let _ = hyper::server::conn::http1::Builder::new()
                .preserve_header_case(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn text_response(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(text + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

fn open_error_response(err: OpenError) -> Response<Body> {
    match err {
        OpenError::Refused(r) => text_response(
            StatusCode::FORBIDDEN,
            format!("agentuser: refused {}: {}", r.dest, r.reason),
        ),
        OpenError::Failed(why) => {
            text_response(StatusCode::BAD_GATEWAY, format!("agentuser: {why}"))
        }
    }
}

async fn proxy_request(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return connect(req, shared).await;
    }
    forward(req, &shared).await
}

/// CONNECT HOST:PORT: the tunnel opens only once the destination is connected.
async fn connect(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        return text_response(
            StatusCode::BAD_REQUEST,
            "agentuser: CONNECT needs HOST:PORT".into(),
        );
    };
    let Some(port) = authority.port_u16() else {
        return text_response(
            StatusCode::BAD_REQUEST,
            "agentuser: CONNECT needs a port".into(),
        );
    };
    let host = Host::from_request(authority.host());
    let upstream = match shared.open(&host, port).await {
        Ok(upstream) => upstream,
        Err(err) => return open_error_response(err),
    };
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        // The connection hyper served: the agent's TCP socket (served in `serve_proxy`).
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            return;
        };
        let client = Client {
            stream: parts.io.into_inner(),
            read_ahead: parts.read_buf,
        };
        let name = match &host {
            Host::Name(n) if n != "localhost" => Some((n.as_str(), port)),
            _ => None,
        };
        relay(&shared, client, upstream, name).await;
    });
    Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    )
}

/// A plain-HTTP request in absolute form (`GET http://host/path`): sent to the host with
/// its Host header set to the URL's authority (so a request cannot name one host in its URL
/// and another in its header).
async fn forward(mut req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let uri = req.uri().clone();
    let (Some(authority), Some("http")) = (uri.authority(), uri.scheme_str()) else {
        return text_response(
            StatusCode::BAD_REQUEST,
            "agentuser: this is a proxy: send http:// URLs or CONNECT".into(),
        );
    };
    let port = authority.port_u16().unwrap_or(80);
    let host = Host::from_request(authority.host());
    if let Some(refusal) = placeholder_in_plain_request(shared, &req, &format!("{host}:{port}")) {
        return refusal;
    }
    let upstream = match shared.open(&host, port).await {
        Ok(upstream) => upstream,
        Err(err) => return open_error_response(err),
    };
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await
    else {
        return text_response(StatusCode::BAD_GATEWAY, "agentuser: upstream failed".into());
    };
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = match path.parse() {
        Ok(p) => p,
        Err(_) => return text_response(StatusCode::BAD_REQUEST, "agentuser: bad path".into()),
    };
    let headers = req.headers_mut();
    for hop in ["proxy-connection", "proxy-authorization", "keep-alive"] {
        headers.remove(hop);
    }
    if let Ok(value) = authority.as_str().parse() {
        headers.insert(hyper::header::HOST, value);
    }
    match sender.send_request(req).await {
        Ok(response) => response.map(|b| b.boxed()),
        Err(e) => text_response(StatusCode::BAD_GATEWAY, format!("agentuser: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{Client, Shared, relay};
    use crate::network::upstream::Upstream;

    fn shared() -> Shared {
        Shared {
            run: "test".into(),
            allowlist: Default::default(),
            names: Default::default(),
            upstream: None,
            syslog_prefix: String::new(),
            log: std::sync::Mutex::new(
                std::fs::File::options()
                    .write(true)
                    .open("/dev/null")
                    .expect("/dev/null"),
            ),
            logged: Default::default(),
            broker: None,
        }
    }

    /// A connected pair of sockets on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let near = TcpStream::connect(listener.local_addr().expect("addr"));
        let (near, far) = tokio::join!(near, listener.accept());
        (near.expect("connect"), far.expect("accept").0)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// One exchange between the agent's end and the server's, several MiB each way (so a
    /// splice loop runs many rounds): (1) the agent sends a request and shuts down its write
    /// side; the server reads it to end of file and only then answers, and the agent reads
    /// the whole answer; (2) with `server_first`, the server sends and shuts down first; the
    /// agent reads to end of file, then still sends. Returns what each end read.
    async fn exchange(
        mut agent: TcpStream,
        mut server: TcpStream,
        server_first: bool,
        request: &[u8],
        answer: &[u8],
    ) -> (Vec<u8>, Vec<u8>) {
        let agent_side = async {
            let mut got = Vec::new();
            if server_first {
                agent.read_to_end(&mut got).await.expect("agent reads");
                agent.write_all(request).await.expect("agent writes");
                agent.shutdown().await.expect("agent shuts down");
            } else {
                agent.write_all(request).await.expect("agent writes");
                agent.shutdown().await.expect("agent shuts down");
                agent.read_to_end(&mut got).await.expect("agent reads");
            }
            got
        };
        let server_side = async {
            let mut got = Vec::new();
            if server_first {
                server.write_all(answer).await.expect("server writes");
                server.shutdown().await.expect("server shuts down");
                server.read_to_end(&mut got).await.expect("server reads");
            } else {
                server.read_to_end(&mut got).await.expect("server reads");
                server.write_all(answer).await.expect("server writes");
                server.shutdown().await.expect("server shuts down");
            }
            got
        };
        tokio::join!(agent_side, server_side)
    }

    /// Half-close passes through both ways, in both orders ([`exchange`]), and the bytes
    /// hyper read ahead go first. Run over a direct TCP destination (spliced) and a wrapped
    /// one (copied).
    async fn half_close_passes_through(spliced: bool) {
        let shared = shared();
        for server_first in [false, true] {
            let (agent, client) = pair().await;
            let (to_server, server) = pair().await;
            let upstream: Upstream = if spliced {
                Box::new(to_server)
            } else {
                let wrapped = hyper_util::rt::TokioIo::new(hyper_util::rt::TokioIo::new(to_server));
                Box::new(wrapped)
            };
            let client = Client {
                stream: client,
                read_ahead: Bytes::from_static(b"early "),
            };
            let request = pattern(3 << 20, 1);
            let answer = pattern(5 << 20, 2);
            let all = async {
                tokio::join!(
                    relay(&shared, client, upstream, None),
                    exchange(agent, server, server_first, &request, &answer)
                )
            };
            let ((), (agent_got, server_got)) = tokio::time::timeout(Duration::from_secs(60), all)
                .await
                .expect("a direction's end of file did not pass through (hang)");
            assert_eq!(agent_got.len(), answer.len());
            assert!(agent_got == answer, "the answer arrived altered");
            let expected = [b"early ".as_slice(), &request].concat();
            assert_eq!(server_got.len(), expected.len());
            assert!(server_got == expected, "the request arrived altered");
        }
    }

    /// A fixed forward (`localhost:PORT`, `--publish`) passes half-close both ways, in both
    /// orders, bytes unaltered.
    #[tokio::test]
    async fn a_fixed_forward_passes_half_close() {
        let target = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front_addr = front.local_addr().expect("addr");
        tokio::spawn(super::serve_forward(
            front,
            target.local_addr().expect("addr"),
        ));
        for server_first in [false, true] {
            let (agent, server) = tokio::join!(TcpStream::connect(front_addr), target.accept());
            let (agent, server) = (agent.expect("connect"), server.expect("accept").0);
            let request = pattern(3 << 20, 3);
            let answer = pattern(5 << 20, 4);
            let all = exchange(agent, server, server_first, &request, &answer);
            let (agent_got, server_got) = tokio::time::timeout(Duration::from_secs(60), all)
                .await
                .expect("a direction's end of file did not pass through (hang)");
            assert!(agent_got == answer, "the answer arrived altered");
            assert!(server_got == request, "the request arrived altered");
        }
    }

    #[tokio::test]
    async fn spliced_tunnel_passes_half_close_and_read_ahead() {
        half_close_passes_through(true).await;
    }

    #[tokio::test]
    async fn copied_tunnel_passes_half_close_and_read_ahead() {
        half_close_passes_through(false).await;
    }
}
