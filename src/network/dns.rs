//! The DNS stub inside the agent's view. It answers A queries for names the allowlist
//! knows with synthetic addresses from 198.18.0.0/15 (RFC 2544's benchmarking range, which
//! nothing real uses) and remembers which name each stands for, so a connection to that
//! address is made to the name. It never forwards a query: every other name gets NXDOMAIN
//! and is logged, so nothing leaves through DNS (docs/threat-model.md row 28). AAAA and other types
//! for known names get an empty answer (clients then use the A record). hickory-proto does
//! the wire format.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::allowlist::{Allowlist, normalize_name};

const SYNTHETIC_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const SYNTHETIC_SIZE: u32 = 1 << 17;
/// Answers stay valid for the whole run: the mapping never changes.
const TTL: u32 = 300;

/// Synthetic addresses and the names they stand for, for one run.
#[derive(Default)]
pub struct Names {
    inner: Mutex<Mapping>,
}

#[derive(Default)]
struct Mapping {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
}

impl Names {
    /// The synthetic address of `name`, allocating one; None when the range is used up.
    pub fn address_of(&self, name: &str) -> Option<Ipv4Addr> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(addr) = map.by_name.get(name) {
            return Some(*addr);
        }
        let used = map.by_name.len() as u32;
        // .0 and the last address are skipped only for tidiness.
        if used + 2 >= SYNTHETIC_SIZE {
            return None;
        }
        let addr = Ipv4Addr::from(SYNTHETIC_BASE + used + 1);
        map.by_name.insert(name.to_owned(), addr);
        map.by_addr.insert(addr, name.to_owned());
        Some(addr)
    }

    /// The name a synthetic address stands for.
    pub fn name_of(&self, addr: IpAddr) -> Option<String> {
        let IpAddr::V4(v4) = addr.to_canonical() else {
            return None;
        };
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.by_addr.get(&v4).cloned()
    }

    pub fn is_synthetic(addr: IpAddr) -> bool {
        match addr.to_canonical() {
            IpAddr::V4(v4) => u32::from(v4) & !(SYNTHETIC_SIZE - 1) == SYNTHETIC_BASE,
            IpAddr::V6(_) => false,
        }
    }
}

/// What the stub did with one query, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    /// A name outside the allowlist (normalized, as queried) and its type.
    Refused {
        name: String,
        kind: String,
    },
    /// Not a DNS query at all: dropped without an answer.
    Malformed,
}

/// Answers one query datagram; None when nothing is to be sent back.
pub fn answer(query: &[u8], allowlist: &Allowlist, names: &Names) -> (Option<Vec<u8>>, Outcome) {
    let Ok(request) = Message::from_vec(query) else {
        return (None, Outcome::Malformed);
    };
    if request.message_type() != MessageType::Query || request.queries().len() != 1 {
        return (None, Outcome::Malformed);
    }
    let question = request.queries()[0].clone();
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    let name = normalize_name(&question.name().to_ascii());
    let kind = question.query_type();
    let mut outcome = Outcome::Answered;
    if request.op_code() != OpCode::Query {
        response.set_response_code(ResponseCode::NotImp);
    } else if let Some(target) = reverse_of_synthetic(&name, names) {
        if kind == RecordType::PTR {
            if let Ok(ptr) = Name::from_ascii(format!("{target}.")) {
                response.add_answer(Record::from_rdata(
                    question.name().clone(),
                    TTL,
                    RData::PTR(PTR(ptr)),
                ));
            }
        }
    } else if allowlist.knows_name(&name) {
        if kind == RecordType::A {
            match names.address_of(&name) {
                Some(addr) => {
                    response.add_answer(Record::from_rdata(
                        question.name().clone(),
                        TTL,
                        RData::A(A(addr)),
                    ));
                }
                None => {
                    response.set_response_code(ResponseCode::ServFail);
                }
            }
        }
    } else {
        response.set_response_code(ResponseCode::NXDomain);
        outcome = Outcome::Refused {
            name,
            kind: kind.to_string(),
        };
    }
    (response.to_vec().ok(), outcome)
}

/// The name behind `d.c.b.a.in-addr.arpa` when a.b.c.d is a synthetic address in use.
fn reverse_of_synthetic(name: &str, names: &Names) -> Option<String> {
    let digits = name.strip_suffix(".in-addr.arpa")?;
    let mut octets: Vec<u8> = digits
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<_>>()?;
    if octets.len() != 4 {
        return None;
    }
    octets.reverse();
    names.name_of(IpAddr::from([octets[0], octets[1], octets[2], octets[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m.to_vec().unwrap()
    }

    #[test]
    fn only_allowed_names_are_answered() {
        let list = Allowlist::from_record(&["api.example.com".into()]).unwrap();
        let names = Names::default();
        let (reply, outcome) = answer(&query("API.example.com.", RecordType::A), &list, &names);
        assert_eq!(outcome, Outcome::Answered);
        let reply = Message::from_vec(&reply.unwrap()).unwrap();
        assert_eq!(reply.id(), 7);
        let RData::A(A(addr)) = reply.answers()[0].data() else {
            panic!("{reply:?}")
        };
        assert!(Names::is_synthetic(IpAddr::V4(*addr)));
        assert_eq!(names.name_of(IpAddr::V4(*addr)).unwrap(), "api.example.com");

        let (reply, outcome) = answer(
            &query("secret.attacker.test.", RecordType::TXT),
            &list,
            &names,
        );
        assert!(matches!(outcome, Outcome::Refused { .. }));
        let reply = Message::from_vec(&reply.unwrap()).unwrap();
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        assert!(reply.answers().is_empty());

        let (reply, _) = answer(&query("api.example.com.", RecordType::AAAA), &list, &names);
        assert!(
            Message::from_vec(&reply.unwrap())
                .unwrap()
                .answers()
                .is_empty()
        );
        assert_eq!(answer(b"junk", &list, &names).1, Outcome::Malformed);
    }
}
