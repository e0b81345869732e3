//! The subset of the ssh-agent protocol (draft-miller-ssh-agent) the filtered agent speaks:
//! REQUEST_IDENTITIES, SIGN_REQUEST and the `session-bind@openssh.com` extension; every other
//! request is answered with FAILURE. Parsing goes through ssh-encoding's bounds-checked
//! reader; a message with trailing bytes is malformed.
#![forbid(unsafe_code)]

use ssh_encoding::{Decode, Encode, Reader};

/// Longest message accepted either way (OpenSSH's ssh-agent uses the same limit).
pub const MAX_MESSAGE: usize = 256 * 1024;

pub const FAILURE: u8 = 5;
pub const SUCCESS: u8 = 6;
pub const REQUEST_IDENTITIES: u8 = 11;
pub const IDENTITIES_ANSWER: u8 = 12;
pub const SIGN_REQUEST: u8 = 13;
pub const SIGN_RESPONSE: u8 = 14;
pub const EXTENSION: u8 = 27;
/// SSH_MSG_USERAUTH_REQUEST (RFC 4252), the first byte after the session id in the data a
/// client asks to have signed for public-key authentication.
const USERAUTH_REQUEST: u8 = 50;

/// A request from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Identities,
    Sign {
        key: Vec<u8>,
        data: Vec<u8>,
        flags: u32,
    },
    SessionBind(SessionBind),
    /// Anything else: its message number (an unknown extension is EXTENSION).
    Other(u8),
}

/// `session-bind@openssh.com`: the server's host key, the session identifier, the host
/// key's signature over it, and whether the connection is a forwarded one.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionBind {
    pub host_key: Vec<u8>,
    pub session_id: Vec<u8>,
    pub signature: Vec<u8>,
    pub forwarding: bool,
}

/// What a public-key authentication request asks to have signed (RFC 4252 section 7, and
/// OpenSSH's `publickey-hostbound-v00@openssh.com`, which adds the server's host key).
#[derive(Debug, PartialEq, Eq)]
pub struct Userauth {
    pub session_id: Vec<u8>,
    pub key: Vec<u8>,
    pub host_key: Option<Vec<u8>>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

impl From<ssh_encoding::Error> for Malformed {
    fn from(_: ssh_encoding::Error) -> Malformed {
        Malformed
    }
}

/// Parses one message body (without its length).
pub fn parse_request(mut msg: &[u8]) -> Result<Request, Malformed> {
    let r = &mut msg;
    let request = match u8::decode(r)? {
        REQUEST_IDENTITIES => Request::Identities,
        SIGN_REQUEST => Request::Sign {
            key: Vec::decode(r)?,
            data: Vec::decode(r)?,
            flags: u32::decode(r)?,
        },
        EXTENSION => {
            let name = Vec::<u8>::decode(r)?;
            if name != b"session-bind@openssh.com" {
                return Ok(Request::Other(EXTENSION));
            }
            Request::SessionBind(SessionBind {
                host_key: Vec::decode(r)?,
                session_id: Vec::decode(r)?,
                signature: Vec::decode(r)?,
                forwarding: boolean(r)?,
            })
        }
        other => return Ok(Request::Other(other)),
    };
    finished(r)?;
    Ok(request)
}

/// Parses data to be signed as a public-key authentication request; anything else (a
/// commit signature, a challenge of some other protocol) is `Malformed`.
pub fn parse_userauth(mut data: &[u8]) -> Result<Userauth, Malformed> {
    let r = &mut data;
    let session_id = Vec::<u8>::decode(r)?;
    if u8::decode(r)? != USERAUTH_REQUEST {
        return Err(Malformed);
    }
    let _user = Vec::<u8>::decode(r)?;
    if Vec::<u8>::decode(r)? != b"ssh-connection" {
        return Err(Malformed);
    }
    let method = Vec::<u8>::decode(r)?;
    let hostbound = match &method[..] {
        b"publickey" => false,
        b"publickey-hostbound-v00@openssh.com" => true,
        _ => return Err(Malformed),
    };
    if !boolean(r)? {
        return Err(Malformed);
    }
    let _algorithm = Vec::<u8>::decode(r)?;
    let key = Vec::<u8>::decode(r)?;
    let host_key = if hostbound {
        Some(Vec::decode(r)?)
    } else {
        None
    };
    finished(r)?;
    Ok(Userauth {
        session_id,
        key,
        host_key,
    })
}

/// The keys of an IDENTITIES_ANSWER (from the owner's agent), without their comments.
pub fn parse_identities(mut msg: &[u8]) -> Result<Vec<Vec<u8>>, Malformed> {
    let r = &mut msg;
    if u8::decode(r)? != IDENTITIES_ANSWER {
        return Err(Malformed);
    }
    let count = u32::decode(r)?;
    let mut keys = Vec::new();
    for _ in 0..count {
        keys.push(Vec::decode(r)?);
        let _comment = Vec::<u8>::decode(r)?;
    }
    finished(r)?;
    Ok(keys)
}

/// The signature of a SIGN_RESPONSE (from the owner's agent).
pub fn parse_sign_response(mut msg: &[u8]) -> Result<Vec<u8>, Malformed> {
    let r = &mut msg;
    if u8::decode(r)? != SIGN_RESPONSE {
        return Err(Malformed);
    }
    let signature = Vec::decode(r)?;
    finished(r)?;
    Ok(signature)
}

/// The SSH encoding of `value` (a key blob, a signature blob).
pub fn encoded(value: &impl Encode) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    value.encode(&mut out).ok()?;
    Some(out)
}

/// An SSH boolean: 0 or 1, anything else malformed.
fn boolean(r: &mut &[u8]) -> Result<bool, Malformed> {
    match u8::decode(r)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Malformed),
    }
}

/// A public key blob, parsed; `None` if it is not one (trailing bytes included).
pub fn key_data(mut blob: &[u8]) -> Option<ssh_key::public::KeyData> {
    let key = ssh_key::public::KeyData::decode(&mut blob).ok()?;
    blob.is_empty().then_some(key)
}

fn finished(r: &mut &[u8]) -> Result<(), Malformed> {
    if r.is_finished() {
        Ok(())
    } else {
        Err(Malformed)
    }
}

/// A message body: its number, then each field as an SSH string (`u32` fields as is).
pub enum Field<'a> {
    U32(u32),
    Bytes(&'a [u8]),
}

/// Builds a framed message (length, number, fields).
pub fn message(number: u8, fields: &[Field<'_>]) -> Vec<u8> {
    let mut body = vec![number];
    for field in fields {
        // Writing into a Vec cannot fail; a field longer than u32 never reaches here.
        let _ = match field {
            Field::U32(n) => n.encode(&mut body),
            Field::Bytes(b) => b.encode(&mut body),
        };
    }
    frame(&body)
}

/// `body` with its length in front.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// IDENTITIES_ANSWER with `keys` (blob, comment).
pub fn identities_answer(keys: &[(Vec<u8>, String)]) -> Vec<u8> {
    let mut fields = vec![Field::U32(keys.len() as u32)];
    for (blob, comment) in keys {
        fields.push(Field::Bytes(blob));
        fields.push(Field::Bytes(comment.as_bytes()));
    }
    message(IDENTITIES_ANSWER, &fields)
}

/// Reads one framed message body; `Ok(None)` at a clean end of stream.
pub fn read_message(stream: &mut impl std::io::Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "ssh-agent message of a bad length",
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(number: u8, fields: &[Field<'_>]) -> Vec<u8> {
        message(number, fields)[4..].to_vec()
    }

    /// A session-bind request whose `is_forwarding` boolean is the byte `forwarding`.
    fn session_bind(forwarding: u8) -> Vec<u8> {
        let mut bind = body(
            EXTENSION,
            &[
                Field::Bytes(b"session-bind@openssh.com"),
                Field::Bytes(b"hk"),
                Field::Bytes(b"sid"),
                Field::Bytes(b"sig"),
            ],
        );
        bind.push(forwarding);
        bind
    }

    fn sign_request() -> Vec<u8> {
        body(
            SIGN_REQUEST,
            &[Field::Bytes(b"key"), Field::Bytes(b"data"), Field::U32(2)],
        )
    }

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(&body(REQUEST_IDENTITIES, &[])),
            Ok(Request::Identities)
        );
        let sign = sign_request();
        assert_eq!(
            parse_request(&sign),
            Ok(Request::Sign {
                key: b"key".to_vec(),
                data: b"data".to_vec(),
                flags: 2
            })
        );
        let Ok(Request::SessionBind(b)) = parse_request(&session_bind(0)) else {
            panic!("not a bind")
        };
        assert_eq!((&b.host_key[..], b.forwarding), (&b"hk"[..], false));
        let other = body(EXTENSION, &[Field::Bytes(b"query")]);
        assert_eq!(parse_request(&other), Ok(Request::Other(EXTENSION)));
        assert_eq!(parse_request(&[17, 0]), Ok(Request::Other(17)));
    }

    #[test]
    fn malformed_requests() {
        let sign = sign_request();
        // Every truncation, a trailing byte, a length pointing past the end.
        for cut in 1..sign.len() {
            assert_eq!(parse_request(&sign[..cut]), Err(Malformed), "{cut}");
        }
        let mut long = sign.clone();
        long.push(0);
        assert_eq!(parse_request(&long), Err(Malformed));
        let mut lying = sign.clone();
        lying[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_request(&lying), Err(Malformed));
        assert_eq!(parse_request(&[]), Err(Malformed));
        assert_eq!(parse_request(&session_bind(7)), Err(Malformed));
    }

    fn userauth(method: &[u8], host_key: Option<&[u8]>) -> Vec<u8> {
        let mut fields = vec![Field::Bytes(b"sid")];
        let mut out = body(0, &fields)[1..].to_vec();
        out.push(USERAUTH_REQUEST);
        fields = vec![
            Field::Bytes(b"git"),
            Field::Bytes(b"ssh-connection"),
            Field::Bytes(method),
        ];
        out.extend_from_slice(&body(0, &fields)[1..]);
        out.push(1);
        let mut rest = vec![Field::Bytes(b"ssh-ed25519"), Field::Bytes(b"key")];
        if let Some(h) = host_key {
            rest.push(Field::Bytes(h));
        }
        out.extend_from_slice(&body(0, &rest)[1..]);
        out
    }

    #[test]
    fn userauth_requests() {
        let plain = parse_userauth(&userauth(b"publickey", None)).unwrap();
        assert_eq!(plain.session_id, b"sid");
        assert_eq!(plain.key, b"key");
        assert_eq!(plain.host_key, None);
        let bound = parse_userauth(&userauth(
            b"publickey-hostbound-v00@openssh.com",
            Some(b"hk"),
        ))
        .unwrap();
        assert_eq!(bound.host_key.as_deref(), Some(&b"hk"[..]));
        assert!(parse_userauth(&userauth(b"password", None)).is_err());
        assert!(parse_userauth(&userauth(b"publickey", Some(b"extra"))).is_err());
        assert!(parse_userauth(b"SSHSIG\0\0\0\0").is_err());
        let full = userauth(b"publickey", None);
        for cut in 0..full.len() {
            assert!(parse_userauth(&full[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn framing() {
        let mut input: &[u8] = &[0, 0, 0, 1, 11, 0, 0];
        assert_eq!(read_message(&mut input).unwrap(), Some(vec![11]));
        assert!(
            !matches!(read_message(&mut input), Ok(Some(_))),
            "truncated length"
        );
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(read_message(&mut huge).is_err());
        let mut empty: &[u8] = &[];
        assert_eq!(read_message(&mut empty).unwrap(), None);
        let answer = identities_answer(&[(b"k1".to_vec(), "c".into())]);
        assert_eq!(parse_identities(&answer[4..]), Ok(vec![b"k1".to_vec()]));
    }
}
