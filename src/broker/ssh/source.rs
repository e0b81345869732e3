//! Where the filtered agent's signatures come from, both opened by the runner with the
//! owner's rights before the policy point drops to agentuser-net:
//! - [`OwnerAgent`]: a connection to the owner's own ssh-agent (its socket from the
//!   caller's SSH_AUTH_SOCK, connected to as the owner, so nothing the owner could not
//!   reach is reached); requests go to it one at a time, already filtered;
//! - [`KeyFiles`]: the owner's private key files, read as the owner at run start;
//!   unencrypted Ed25519 and ECDSA keys only (an encrypted key must be in the owner's agent).
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::net::UnixStream;

use ssh_key::PrivateKey;
use zeroize::Zeroizing;

use super::filter::KeySource;
use super::protocol::{self, Field};

pub struct OwnerAgent {
    pub stream: UnixStream,
}

impl OwnerAgent {
    fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
        let io = |e: std::io::Error| format!("the owner's ssh-agent: {e}");
        self.stream.write_all(request).map_err(io)?;
        protocol::read_message(&mut self.stream)
            .map_err(io)?
            .ok_or_else(|| "the owner's ssh-agent closed the connection".to_string())
    }
}

impl KeySource for OwnerAgent {
    fn available(&mut self) -> Result<Vec<Vec<u8>>, String> {
        let answer = self.call(&protocol::message(protocol::REQUEST_IDENTITIES, &[]))?;
        protocol::parse_identities(&answer)
            .map_err(|_| "the owner's ssh-agent sent a malformed key list".to_string())
    }

    fn sign(&mut self, key: &[u8], data: &[u8], flags: u32) -> Result<Vec<u8>, String> {
        let request = protocol::message(
            protocol::SIGN_REQUEST,
            &[Field::Bytes(key), Field::Bytes(data), Field::U32(flags)],
        );
        let answer = self.call(&request)?;
        protocol::parse_sign_response(&answer)
            .map_err(|_| "the owner's ssh-agent refused to sign".to_string())
    }
}

/// Private keys read from the owner's files (wiped when dropped: ssh-key zeroizes them).
pub struct KeyFiles {
    pub keys: Vec<PrivateKey>,
}

impl KeyFiles {
    /// Parses an OpenSSH private key file's text; refuses encrypted keys and the kinds this
    /// agent cannot sign with.
    pub fn parse(text: &Zeroizing<String>) -> Result<PrivateKey, String> {
        let key = PrivateKey::from_openssh(text.as_bytes())
            .map_err(|_| "not an OpenSSH private key".to_string())?;
        if key.is_encrypted() {
            return Err("it is encrypted: load it into your ssh-agent instead".into());
        }
        match key.algorithm() {
            ssh_key::Algorithm::Ed25519 | ssh_key::Algorithm::Ecdsa { .. } => Ok(key),
            other => Err(format!(
                "{other} keys are only served from your ssh-agent, not from the file"
            )),
        }
    }
}

impl KeySource for KeyFiles {
    fn available(&mut self) -> Result<Vec<Vec<u8>>, String> {
        Ok(self.keys.iter().filter_map(blob_of).collect())
    }

    fn sign(&mut self, key: &[u8], data: &[u8], _flags: u32) -> Result<Vec<u8>, String> {
        let private = self
            .keys
            .iter()
            .find(|k| blob_of(k).as_deref() == Some(key))
            .ok_or_else(|| "no such key".to_string())?;
        let signature: ssh_key::Signature = signature::Signer::try_sign(private, data)
            .map_err(|_| "the key could not sign".to_string())?;
        protocol::encoded(&signature)
            .ok_or_else(|| "the signature could not be encoded".to_string())
    }
}

/// The public blob of a private key.
pub fn blob_of(key: &PrivateKey) -> Option<Vec<u8>> {
    protocol::encoded(key.public_key().key_data())
}
