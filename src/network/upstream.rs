//! Connections out of the policy point: directly, or through the host's own HTTP proxy
//! (`upstream_proxy` in config.toml) with CONNECT, for hosts whose egress needs one.
#![forbid(unsafe_code)]

use std::any::Any;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream to the destination.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket itself when the stream is one (a direct connection, which the relay
    /// can splice), else the stream back (a tunnel through `upstream_proxy`).
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, Upstream>;
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {
    fn into_tcp(self: Box<Self>) -> Result<TcpStream, Upstream> {
        if !(&*self as &dyn Any).is::<TcpStream>() {
            return Err(self);
        }
        let any: Box<dyn Any> = self;
        any.downcast::<TcpStream>()
            .map(|tcp| *tcp)
            .map_err(|_| unreachable!("the type was checked above"))
    }
}

pub type Upstream = Box<dyn Stream>;

/// `upstream_proxy = "http://HOST:PORT"`.
#[derive(Debug, Clone)]
pub struct UpstreamProxy {
    pub authority: String,
}

/// `upstream_proxy` as the config validated it (`config::upstream_proxy_authority`).
pub fn parse_proxy(text: &str) -> Result<UpstreamProxy, String> {
    crate::config::upstream_proxy_authority(text).map(|authority| UpstreamProxy { authority })
}

impl UpstreamProxy {
    /// A tunnel to `target` (`HOST:PORT`) through the proxy.
    pub async fn connect(&self, target: &str) -> io::Result<Upstream> {
        let tcp = TcpStream::connect(self.authority.as_str()).await?;
        tcp.set_nodelay(true)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(conn.with_upgrades());
        let request = Request::connect(target)
            .header(hyper::header::HOST, target)
            .body(Empty::<Bytes>::new())
            .map_err(io::Error::other)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        if !response.status().is_success() {
            return Err(io::Error::other(format!(
                "upstream proxy answered {}",
                response.status()
            )));
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(io::Error::other)?;
        Ok(Box::new(TokioIo::new(upgraded)))
    }
}

/// A direct TCP connection, with Nagle off (the agent's own stack already batches).
pub async fn direct(addr: SocketAddr) -> io::Result<Upstream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(Box::new(tcp))
}

#[cfg(test)]
mod tests {
    #[test]
    fn proxy_urls() {
        assert!(super::parse_proxy("http://proxy.corp:3128").is_ok());
        assert!(super::parse_proxy("http://10.0.0.1:8080/").is_ok());
        for bad in [
            "proxy:3128",
            "https://proxy:3128",
            "http://proxy",
            "http://u:p@proxy:1",
            "http://proxy:1/x",
        ] {
            assert!(super::parse_proxy(bad).is_err(), "{bad}");
        }
    }
}
