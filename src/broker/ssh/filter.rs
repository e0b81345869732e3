//! The filtered agent's decisions, one client connection at a time.
//!
//! - REQUEST_IDENTITIES: only the chosen keys that the key source can use.
//! - `session-bind@openssh.com`: accepted once per connection, not for forwarding, only
//!   when the host key's signature over the session identifier verifies and the host key
//!   is one recorded for an allowed host of some chosen key.
//! - SIGN_REQUEST: only for a chosen key, only on a bound connection, only for data that is
//!   a public-key authentication request of that very session (its session identifier is
//!   the bound one, its key the requested one, its host key, if it names one, the bound
//!   one), and only when the bound host key belongs to a host this key is allowed for.
//!   A client replaying another session's bind gets signatures usable in that session only.
//!   Anything else (signing commits, arbitrary challenges, other hosts) is refused.
#![forbid(unsafe_code)]

use signature::Verifier as _;
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg, Signature};

use super::protocol::{self, FAILURE, Field, Request, SUCCESS, SessionBind};

/// A chosen key: its public blob, the comment shown, and the host keys it may sign for.
#[derive(Debug, Clone)]
pub struct Key {
    pub blob: Vec<u8>,
    pub comment: String,
    pub host_keys: Vec<Vec<u8>>,
}

/// Where signatures come from: the owner's agent or the owner's key files.
pub trait KeySource: Send {
    /// The public blobs of the keys it can sign with.
    fn available(&mut self) -> Result<Vec<Vec<u8>>, String>;
    /// An SSH signature blob by `key` over `data`.
    fn sign(&mut self, key: &[u8], data: &[u8], flags: u32) -> Result<Vec<u8>, String>;
}

/// One client connection's state.
#[derive(Default)]
pub struct Connection {
    bound: Option<Bound>,
}

struct Bound {
    host_key: Vec<u8>,
    session_id: Vec<u8>,
}

/// The reply to one request, and why it was refused when that is worth logging.
pub struct Reply {
    pub message: Vec<u8>,
    pub refusal: Option<String>,
}

fn failure(why: Option<String>) -> Reply {
    Reply {
        message: protocol::message(FAILURE, &[]),
        refusal: why,
    }
}

impl Connection {
    pub fn handle(&mut self, body: &[u8], keys: &[Key], source: &mut dyn KeySource) -> Reply {
        match protocol::parse_request(body) {
            Err(_) => failure(Some("malformed ssh-agent request".into())),
            Ok(Request::Identities) => list(keys, source),
            Ok(Request::SessionBind(bind)) => self.bind(bind, keys),
            Ok(Request::Sign { key, data, flags }) => self.sign(&key, &data, flags, keys, source),
            Ok(Request::Other(number)) => failure(Some(format!(
                "ssh-agent request {number} refused (only listing and signing are served)"
            ))),
        }
    }

    fn bind(&mut self, bind: SessionBind, keys: &[Key]) -> Reply {
        if self.bound.is_some() {
            return failure(Some("session-bind: the connection is already bound".into()));
        }
        if bind.forwarding {
            return failure(Some("session-bind: agent forwarding is not served".into()));
        }
        if let Err(why) = verify(&bind.host_key, &bind.session_id, &bind.signature) {
            return failure(Some(format!("session-bind: {why}")));
        }
        if !keys.iter().any(|k| k.host_keys.contains(&bind.host_key)) {
            return failure(Some(format!(
                "session-bind: host key {} is not one of an allowed host",
                fingerprint(&bind.host_key)
            )));
        }
        self.bound = Some(Bound {
            host_key: bind.host_key,
            session_id: bind.session_id,
        });
        Reply {
            message: protocol::message(SUCCESS, &[]),
            refusal: None,
        }
    }

    fn sign(
        &mut self,
        blob: &[u8],
        data: &[u8],
        flags: u32,
        keys: &[Key],
        source: &mut dyn KeySource,
    ) -> Reply {
        let Some(key) = keys.iter().find(|k| k.blob == blob) else {
            return failure(Some(format!(
                "signing with key {} refused: not a key given to the agent",
                fingerprint(blob)
            )));
        };
        let Some(bound) = &self.bound else {
            return failure(Some(
                "signing refused: the client did not bind the connection to a host (session-bind@openssh.com)".into(),
            ));
        };
        if !key.host_keys.contains(&bound.host_key) {
            return failure(Some(format!(
                "signing refused: host key {} is not one of the hosts of key {}",
                fingerprint(&bound.host_key),
                fingerprint(blob)
            )));
        }
        let Ok(request) = protocol::parse_userauth(data) else {
            return failure(Some(
                "signing refused: the data is not an ssh authentication request".into(),
            ));
        };
        if request.session_id != bound.session_id
            || request.key != blob
            || request
                .host_key
                .as_ref()
                .is_some_and(|h| *h != bound.host_key)
        {
            return failure(Some(
                "signing refused: the authentication request is not for the bound session".into(),
            ));
        }
        match source.sign(blob, data, flags) {
            Ok(signature) => Reply {
                message: protocol::message(protocol::SIGN_RESPONSE, &[Field::Bytes(&signature)]),
                refusal: None,
            },
            Err(why) => failure(Some(format!("signing failed: {why}"))),
        }
    }
}

fn list(keys: &[Key], source: &mut dyn KeySource) -> Reply {
    let available = match source.available() {
        Ok(available) => available,
        Err(why) => return failure(Some(format!("listing keys failed: {why}"))),
    };
    let shown: Vec<(Vec<u8>, String)> = keys
        .iter()
        .filter(|k| available.contains(&k.blob))
        .map(|k| (k.blob.clone(), k.comment.clone()))
        .collect();
    Reply {
        message: protocol::identities_answer(&shown),
        refusal: None,
    }
}

/// `SHA256:...` of a key blob, for log lines.
pub fn fingerprint(blob: &[u8]) -> String {
    match protocol::key_data(blob) {
        Some(key) => key.fingerprint(HashAlg::Sha256).to_string(),
        None => "(unparsable key)".into(),
    }
}

/// Verifies `signature` (an SSH signature blob) by `host_key` over `message`.
pub fn verify(host_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), String> {
    let key = protocol::key_data(host_key).ok_or_else(|| "unparsable host key".to_string())?;
    let sig = Signature::try_from(signature).map_err(|_| "unparsable signature".to_string())?;
    let verified = match (&key, sig.algorithm()) {
        (KeyData::Rsa(rsa), Algorithm::Rsa { hash }) => verify_rsa(rsa, hash, message, &sig),
        _ => key.verify(message, &sig).is_ok(),
    };
    if verified {
        Ok(())
    } else {
        Err("the host key's signature over the session does not verify".into())
    }
}

/// RSA host keys through ring (ssh-key's own RSA support would pull in a second RSA
/// implementation): rsa-sha2-256 and rsa-sha2-512 only, never SHA-1.
fn verify_rsa(
    rsa: &ssh_key::public::RsaPublicKey,
    hash: Option<HashAlg>,
    message: &[u8],
    sig: &Signature,
) -> bool {
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA512};
    let algorithm = match hash {
        Some(HashAlg::Sha256) => &RSA_PKCS1_2048_8192_SHA256,
        Some(HashAlg::Sha512) => &RSA_PKCS1_2048_8192_SHA512,
        _ => return false,
    };
    let (Some(n), Some(e)) = (rsa.n.as_positive_bytes(), rsa.e.as_positive_bytes()) else {
        return false;
    };
    ring::signature::RsaPublicKeyComponents { n, e }
        .verify(algorithm, message, sig.as_bytes())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::PrivateKey;
    use ssh_key::private::Ed25519Keypair;

    struct Stub;
    impl KeySource for Stub {
        fn available(&mut self) -> Result<Vec<Vec<u8>>, String> {
            Ok(vec![b"user-key".to_vec(), b"other-key".to_vec()])
        }
        fn sign(&mut self, _: &[u8], _: &[u8], _: u32) -> Result<Vec<u8>, String> {
            Ok(b"signed".to_vec())
        }
    }

    fn host(seed: u8) -> (PrivateKey, Vec<u8>) {
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]));
        let blob = protocol::encoded(key.public_key().key_data()).unwrap();
        (key, blob)
    }

    fn bind(key: &PrivateKey, blob: &[u8], session: &[u8]) -> Vec<u8> {
        let sig: Signature = signature::Signer::try_sign(key, session).unwrap();
        let sig = protocol::encoded(&sig).unwrap();
        let mut m = protocol::message(
            protocol::EXTENSION,
            &[
                Field::Bytes(b"session-bind@openssh.com"),
                Field::Bytes(blob),
                Field::Bytes(session),
                Field::Bytes(&sig),
            ],
        );
        m.push(0);
        m[4..].to_vec()
    }

    fn login(session: &[u8], key: &[u8]) -> Vec<u8> {
        let mut data = protocol::message(0, &[Field::Bytes(session)])[5..].to_vec();
        data.push(50);
        let rest = protocol::message(
            0,
            &[
                Field::Bytes(b"git"),
                Field::Bytes(b"ssh-connection"),
                Field::Bytes(b"publickey"),
            ],
        );
        data.extend_from_slice(&rest[5..]);
        data.push(1);
        let tail = protocol::message(0, &[Field::Bytes(b"ssh-ed25519"), Field::Bytes(key)]);
        data.extend_from_slice(&tail[5..]);
        data
    }

    fn sign(key: &[u8], data: &[u8]) -> Vec<u8> {
        let m = protocol::message(
            protocol::SIGN_REQUEST,
            &[Field::Bytes(key), Field::Bytes(data), Field::U32(0)],
        );
        m[4..].to_vec()
    }

    #[test]
    fn signs_only_bound_logins_to_allowed_hosts_with_chosen_keys() {
        let (allowed, allowed_blob) = host(1);
        let (other, other_blob) = host(2);
        let keys = vec![Key {
            blob: b"user-key".to_vec(),
            comment: "k".into(),
            host_keys: vec![allowed_blob.clone()],
        }];
        let code = |reply: Reply| reply.message[4];
        let list = code(Connection::default().handle(&[11], &keys, &mut Stub));
        assert_eq!(list, protocol::IDENTITIES_ANSWER);
        let listed = Connection::default()
            .handle(&[11], &keys, &mut Stub)
            .message;
        assert_eq!(
            protocol::parse_identities(&listed[4..]),
            Ok(vec![b"user-key".to_vec()])
        );

        // Unbound: nothing is signed.
        let mut c = Connection::default();
        assert_eq!(
            code(c.handle(
                &sign(b"user-key", &login(b"S1", b"user-key")),
                &keys,
                &mut Stub
            )),
            FAILURE
        );
        // Another host's key, or a signature by another key, does not bind.
        assert_eq!(
            code(c.handle(&bind(&other, &other_blob, b"S1"), &keys, &mut Stub)),
            FAILURE
        );
        assert_eq!(
            code(c.handle(&bind(&other, &allowed_blob, b"S1"), &keys, &mut Stub)),
            FAILURE
        );
        // The allowed host binds once.
        assert_eq!(
            code(c.handle(&bind(&allowed, &allowed_blob, b"S1"), &keys, &mut Stub)),
            SUCCESS
        );
        assert_eq!(
            code(c.handle(&bind(&allowed, &allowed_blob, b"S2"), &keys, &mut Stub)),
            FAILURE
        );
        // Only a login of this session, with the chosen key, is signed.
        let ok = sign(b"user-key", &login(b"S1", b"user-key"));
        assert_eq!(
            code(c.handle(&ok, &keys, &mut Stub)),
            protocol::SIGN_RESPONSE
        );
        for bad in [
            sign(b"user-key", &login(b"S2", b"user-key")),
            sign(b"user-key", &login(b"S1", b"other-key")),
            sign(b"other-key", &login(b"S1", b"other-key")),
            sign(b"user-key", b"SSHSIG arbitrary data"),
        ] {
            assert_eq!(code(c.handle(&bad, &keys, &mut Stub)), FAILURE);
        }
        // Adding keys, locking, anything else: refused.
        assert_eq!(code(c.handle(&[17, 0, 0, 0, 0], &keys, &mut Stub)), FAILURE);
    }
}
