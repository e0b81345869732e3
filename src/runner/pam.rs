//! The PAM session of a run (docs/design.md section 4 step 3): service `agentuser`, account and
//! session stacks, and setcred (the service's auth stack is there for it alone). There is no
//! authentication step on purpose: agentuser has already authorized the caller (root or the
//! agent's owner), as runuser(1) does.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};

use crate::sys::pam::{
    Item, PAM_DELETE_CRED, PAM_ESTABLISH_CRED, PAM_REINITIALIZE_CRED, PAM_SILENT, Transaction,
};

pub const SERVICE: &str = "agentuser";

/// An open PAM session; closed by [`PamSession::close`] (or, as a last resort, on drop).
/// The transaction ends (`pam_end`) when the value is dropped.
pub struct PamSession {
    pam: Transaction,
    open: bool,
}

impl PamSession {
    /// Starts PAM for `user`, runs the account stack (a refusal refuses the run), then
    /// establishes credentials and opens the session.
    pub fn open(user: &str, caller: &str, tty: Option<&str>) -> Result<PamSession> {
        let what = || format!("PAM service '{SERVICE}' for {user}");
        let mut pam = Transaction::start(SERVICE, user).with_context(what)?;
        pam.set_item(Item::RemoteUser, caller).with_context(what)?;
        if let Some(tty) = tty {
            pam.set_item(Item::Tty, tty).with_context(what)?;
        }
        pam.acct_mgmt(PAM_SILENT)
            .with_context(|| format!("{}: account check refused", what()))?;
        open_session(&mut pam).with_context(|| format!("{}: opening the session", what()))?;
        Ok(PamSession { pam, open: true })
    }

    /// Closes the session and deletes the credentials it established.
    pub fn close(mut self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.open) {
            return Ok(());
        }
        let closed = self.pam.close_session(PAM_SILENT);
        let deleted = self.pam.setcred(PAM_DELETE_CRED | PAM_SILENT);
        closed.and(deleted).context("closing the PAM session")
    }
}

/// Credentials, then the session, then credentials again: modules disagree on whether
/// setcred comes before or after open_session (Linux-PAM documents before, some modules
/// expect after), so both are done, as OpenSSH does. A failure undoes what was done.
fn open_session(pam: &mut Transaction) -> Result<(), crate::sys::pam::PamError> {
    pam.setcred(PAM_ESTABLISH_CRED | PAM_SILENT)?;
    if let Err(err) = pam.open_session(PAM_SILENT) {
        let _ = pam.setcred(PAM_DELETE_CRED | PAM_SILENT);
        return Err(err);
    }
    if let Err(err) = pam.setcred(PAM_REINITIALIZE_CRED | PAM_SILENT) {
        let _ = pam.close_session(PAM_SILENT);
        let _ = pam.setcred(PAM_DELETE_CRED | PAM_SILENT);
        return Err(err);
    }
    Ok(())
}

impl Drop for PamSession {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}
