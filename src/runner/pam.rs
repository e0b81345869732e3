//! The PAM session of a run (DESIGN.md section 4 step 3): service `agentuser`, account and
//! session stacks only. There is no authentication step on purpose: agentuser has already
//! authorized the caller (root or the agent's owner), as runuser(1) does.
#![forbid(unsafe_code)]

use anyhow::{Context, Result, anyhow};
use pam_client::conv_null::Conversation;
use pam_client::{Context as PamContext, Flag, Session};

pub const SERVICE: &str = "agentuser";

/// An open PAM session; closed by [`PamSession::close`] (or, as a last resort, on drop).
pub struct PamSession {
    // The session borrows the context; both live in one heap box so the borrow stays valid.
    inner: Box<Inner>,
}

struct Inner {
    context: PamContext<Conversation>,
    token: Option<pam_client::SessionToken>,
}

impl PamSession {
    /// Starts PAM for `user`, runs the account stack (a refusal refuses the run), then
    /// establishes credentials and opens the session.
    pub fn open(user: &str, caller: &str, tty: Option<&str>) -> Result<PamSession> {
        let what = || format!("PAM service '{SERVICE}' for {user}");
        let mut context = PamContext::new(SERVICE, Some(user), Conversation::new())
            .map_err(|e| anyhow!("{e}"))
            .with_context(what)?;
        context
            .set_ruser(Some(caller))
            .map_err(|e| anyhow!("{e}"))
            .with_context(what)?;
        if let Some(tty) = tty {
            context
                .set_tty(Some(tty))
                .map_err(|e| anyhow!("{e}"))
                .with_context(what)?;
        }
        context
            .acct_mgmt(Flag::SILENT)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("{}: account check refused", what()))?;
        let session = context
            .open_session(Flag::SILENT)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("{}: opening the session", what()))?;
        let token = session.leak();
        Ok(PamSession {
            inner: Box::new(Inner {
                context,
                token: Some(token),
            }),
        })
    }

    /// Closes the session and deletes the credentials it established.
    pub fn close(mut self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<()> {
        let Some(token) = self.inner.token.take() else {
            return Ok(());
        };
        let session: Session<'_, Conversation> = self.inner.context.unleak_session(token);
        session
            .close(Flag::SILENT)
            .map_err(|e| anyhow!("{e}"))
            .context("closing the PAM session")
    }
}

impl Drop for PamSession {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}
