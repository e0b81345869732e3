//! A TLS-terminated connection to a bound host: the agent's client talks TLS to the policy
//! point (a leaf of the per-run CA), the policy point talks verified TLS to the real host,
//! and each HTTP/1.1 request in between has the placeholders of the secrets bound to that
//! host swapped for their values, in the URL and the headers. A request that carries the
//! placeholder of a secret bound elsewhere is answered 403 and logged, and never sent.
#![forbid(unsafe_code)]

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{Broker, Leak};
use crate::network::upstream::Upstream;

type Body = BoxBody<Bytes, hyper::Error>;
/// Records a refusal: (destination, reason).
pub type Refuse<'a> = &'a (dyn Fn(String, String) + Send + Sync);

/// Serves one intercepted connection until either side closes it.
pub async fn serve<C>(
    broker: &Broker,
    refuse: Refuse<'_>,
    client: C,
    upstream: Upstream,
    host: &str,
    port: u16,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let dest = format!("{host}:{port}");
    let config = match broker.authority.server_config(host) {
        Ok(config) => config,
        Err(e) => return refuse(dest, format!("no certificate for the host: {e}")),
    };
    let client = match TlsAcceptor::from(config).accept(client).await {
        Ok(tls) => tls,
        Err(e) => {
            return refuse(
                dest,
                format!(
                    "TLS with the agent's client failed ({e}): a client that pins certificates \
                     or does not trust the agentuser CA gets no brokered credential, and nothing \
                     was sent"
                ),
            );
        }
    };
    let Ok(name) = ServerName::try_from(host.to_owned()) else {
        return refuse(dest, "not a TLS server name".into());
    };
    let upstream = match TlsConnector::from(broker.authority.upstream())
        .connect(name, upstream)
        .await
    {
        Ok(tls) => tls,
        Err(e) => {
            return refuse(
                dest,
                format!("the host's certificate did not verify against the system CA store: {e}"),
            );
        }
    };
    let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await
    else {
        return;
    };
    tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let authority = if port == 443 {
        host.to_owned()
    } else {
        dest.clone()
    };
    let service = hyper::service::service_fn(|req: Request<Incoming>| {
        let sender = sender.clone();
        let (authority, dest) = (&authority, &dest);
        async move {
            let req = match rewrite(broker, req, host, authority) {
                Ok(req) => req,
                Err(leak) => {
                    let reason = leak_reason(&leak, "a request to a host it is not bound to");
                    refuse(dest.clone(), reason.clone());
                    return Ok::<_, hyper::Error>(text(StatusCode::FORBIDDEN, reason));
                }
            };
            let mut sender = sender.lock().await;
            Ok(match sender.send_request(req).await {
                Ok(response) => response.map(|b| b.boxed()),
                Err(e) => text(StatusCode::BAD_GATEWAY, format!("agentuser: {e}")),
            })
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(client), service)
        .await;
}

/// Why a request with a placeholder was refused.
pub fn leak_reason(leak: &Leak, where_: &str) -> String {
    format!(
        "placeholder of the brokered secret {} in {where_}: likely exfiltration attempt, \
         refused",
        leak.var
    )
}

/// The request with the placeholders of `host`'s secrets swapped in, its URL in origin form
/// and its Host header set to the host connected to (so a client cannot route the value to
/// another site behind the same address).
fn rewrite(
    broker: &Broker,
    mut req: Request<Incoming>,
    host: &str,
    authority: &str,
) -> Result<Request<Incoming>, Leak> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Some(swapped) = broker.secrets.substitute(path.as_bytes(), host)? {
        // A value that does not make a valid URL (it never should) leaves the placeholder.
        if let Ok(uri) = hyper::Uri::try_from(swapped.as_slice()) {
            *req.uri_mut() = uri;
        }
    } else if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    let headers = req.headers_mut();
    for value in headers.values_mut() {
        if let Some(swapped) = broker.secrets.substitute_header(value.as_bytes(), host)? {
            if let Ok(mut new) = HeaderValue::from_bytes(&swapped) {
                new.set_sensitive(true);
                *value = new;
            }
        }
    }
    if let Ok(value) = HeaderValue::from_str(authority) {
        headers.insert(hyper::header::HOST, value);
    }
    Ok(req)
}

pub fn text(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("agentuser: {text}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}
