//! The server name (SNI) of a TLS ClientHello, read from the first bytes a client sends.
//! TLS is only parsed here, never terminated (tls-parser does the parsing).
#![forbid(unsafe_code)]

use tls_parser::{
    TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_client_hello_extensions,
    parse_tls_message_handshake,
};

/// Largest ClientHello the policy point buffers (a real one is below 4 KiB; post-quantum
/// key shares bring it near 2 KiB).
pub const MAX_HELLO: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not a TLS handshake: the stream is some other protocol.
    NotTls,
    /// More bytes are needed.
    Incomplete,
    /// A complete ClientHello with this server name, if it has one.
    Sni(Option<String>),
    /// A TLS record that is not a well-formed ClientHello.
    Malformed,
}

/// Inspects the first bytes of a client's stream.
pub fn inspect(buf: &[u8]) -> Hello {
    const HANDSHAKE: u8 = 0x16;
    match buf.first() {
        None => return Hello::Incomplete,
        Some(&HANDSHAKE) => {}
        Some(_) => return Hello::NotTls,
    }
    // The handshake message may span several records: collect their fragments.
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return incomplete(buf);
        }
        if rest[0] != HANDSHAKE || rest[1] != 3 {
            return Hello::Malformed;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if rest.len() < 5 + len {
            return incomplete(buf);
        }
        message.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if message.len() >= 4 {
            let body = (usize::from(message[1]) << 16)
                | (usize::from(message[2]) << 8)
                | usize::from(message[3]);
            if message.len() >= 4 + body {
                return parse_hello(&message[..4 + body]);
            }
        }
    }
}

fn incomplete(buf: &[u8]) -> Hello {
    if buf.len() >= MAX_HELLO {
        Hello::Malformed
    } else {
        Hello::Incomplete
    }
}

fn parse_hello(message: &[u8]) -> Hello {
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) =
        parse_tls_message_handshake(message)
    else {
        return Hello::Malformed;
    };
    let Some(ext) = hello.ext else {
        return Hello::Sni(None);
    };
    let Ok((_, extensions)) = parse_tls_client_hello_extensions(ext) else {
        return Hello::Malformed;
    };
    for extension in extensions {
        if let TlsExtension::SNI(names) = extension {
            // Host name entries are type 0; a ClientHello carries at most one.
            let mut hosts = names.iter().filter(|(kind, _)| kind.0 == 0);
            let (Some((_, name)), None) = (hosts.next(), hosts.next()) else {
                return Hello::Malformed;
            };
            return match std::str::from_utf8(name) {
                Ok(name) => Hello::Sni(Some(super::allowlist::normalize_name(name))),
                Err(_) => Hello::Malformed,
            };
        }
    }
    Hello::Sni(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal TLS 1.2 ClientHello with one SNI entry.
    fn hello(name: &str) -> Vec<u8> {
        let mut sni = vec![0u8];
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name.as_bytes());
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&((sni.len() + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut record = vec![0x16, 3, 1];
        record.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        record.extend_from_slice(&msg);
        record
    }

    #[test]
    fn sni_is_found_and_partial_input_waits() {
        let h = hello("Api.Example.com");
        assert_eq!(inspect(&h), Hello::Sni(Some("api.example.com".into())));
        for cut in [0, 1, 4, 5, 20, h.len() - 1] {
            assert_eq!(inspect(&h[..cut]), Hello::Incomplete, "cut {cut}");
        }
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(inspect(b"SSH-2.0-OpenSSH\r\n"), Hello::NotTls);
        let mut bad = h.clone();
        bad[5] = 2; // a ServerHello type
        assert_eq!(inspect(&bad), Hello::Malformed);
        // The same message split over two records.
        let msg = &h[5..];
        let mut split = vec![0x16, 3, 1, 0, 10];
        split.extend_from_slice(&msg[..10]);
        split.extend_from_slice(&[0x16, 3, 1]);
        split.extend_from_slice(&((msg.len() - 10) as u16).to_be_bytes());
        split.extend_from_slice(&msg[10..]);
        assert_eq!(inspect(&split), Hello::Sni(Some("api.example.com".into())));
    }
}
