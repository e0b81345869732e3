//! The policy point's side: a thread accepting on the agent's socket, one thread per client
//! connection (at most [`MAX_CLIENTS`]), requests to the key source one at a time.
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::Agent;
use super::filter::{Connection, Key, KeySource};
use super::protocol;

/// Client connections served at once; more are closed at once.
const MAX_CLIENTS: usize = 16;

type Log = Arc<dyn Fn(String) + Send + Sync>;

struct State {
    keys: Vec<Key>,
    source: Mutex<Box<dyn KeySource>>,
    agent_uid: u32,
    clients: AtomicUsize,
    log: Log,
}

/// Starts serving (returns at once). `log` records refusals in the run's network log.
pub fn serve(agent: Agent, log: Log) -> std::io::Result<()> {
    let Agent {
        keys,
        source,
        listener,
        agent_uid,
        ..
    } = agent;
    let state = Arc::new(State {
        keys,
        source: Mutex::new(source),
        agent_uid,
        clients: AtomicUsize::new(0),
        log,
    });
    std::thread::Builder::new()
        .name("ssh-agent".into())
        .spawn(move || {
            for client in listener.incoming().flatten() {
                accept(&state, client);
            }
        })?;
    Ok(())
}

fn accept(state: &Arc<State>, client: UnixStream) {
    // The socket is the agent's, mode 0600; the peer's uid is checked all the same.
    match getsockopt(&client, PeerCredentials) {
        Ok(cred) if cred.uid() == state.agent_uid => {}
        _ => return,
    }
    if state.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
        state.clients.fetch_sub(1, Ordering::SeqCst);
        (state.log)("too many ssh-agent connections at once".into());
        return;
    }
    let state = state.clone();
    let spawned = std::thread::Builder::new()
        .name("ssh-agent-client".into())
        .spawn({
            let state = state.clone();
            move || {
                talk(&state, client);
                state.clients.fetch_sub(1, Ordering::SeqCst);
            }
        });
    if spawned.is_err() {
        state.clients.fetch_sub(1, Ordering::SeqCst);
    }
}

fn talk(state: &State, mut client: UnixStream) {
    let mut connection = Connection::default();
    while let Ok(Some(body)) = protocol::read_message(&mut client) {
        let reply = {
            let mut source = state.source.lock().unwrap_or_else(|e| e.into_inner());
            connection.handle(&body, &state.keys, source.as_mut())
        };
        if let Some(why) = reply.refusal {
            (state.log)(why);
        }
        if client.write_all(&reply.message).is_err() {
            return;
        }
    }
}
