//! Hand-written bindings for the few Linux-PAM calls the runner makes (as sudo-rs does), in
//! place of a bindgen-generated crate: start, set_item, acct_mgmt, setcred, open and close
//! session, strerror, end. Types and constants follow `<security/_pam_types.h>` and
//! `<security/pam_appl.h>`; a unit test compares the constants with the installed header.
//!
//! The conversation answers nothing: a module that prompts (echo on or off) gets
//! `PAM_CONV_ERR`; informational and error messages are dropped. agentuser never runs an
//! authentication stack, so no module has a reason to ask.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::fmt;
use std::ptr::{self, NonNull};

const PAM_SUCCESS: c_int = 0;
const PAM_BUF_ERR: c_int = 5;
const PAM_CONV_ERR: c_int = 19;
const PAM_ERROR_MSG: c_int = 3;
const PAM_TEXT_INFO: c_int = 4;
const PAM_MAX_NUM_MSG: usize = 32;

/// Flags of the module calls (`pam_acct_mgmt`, `pam_setcred`, `pam_*_session`).
pub const PAM_SILENT: c_int = 0x8000;
pub const PAM_ESTABLISH_CRED: c_int = 0x0002;
pub const PAM_DELETE_CRED: c_int = 0x0004;
pub const PAM_REINITIALIZE_CRED: c_int = 0x0008;

/// The string items the runner sets (`pam_set_item`).
#[derive(Debug, Clone, Copy)]
pub enum Item {
    /// PAM_TTY: the terminal the session runs on.
    Tty = 3,
    /// PAM_RUSER: the user who asked for the session (the caller).
    RemoteUser = 8,
}

/// `pam_handle_t`, opaque.
#[repr(C)]
struct RawHandle {
    _opaque: [u8; 0],
}

#[repr(C)]
struct Message {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct Response {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConvFn =
    unsafe extern "C" fn(c_int, *const *const Message, *mut *mut Response, *mut c_void) -> c_int;

#[repr(C)]
struct Conv {
    conv: Option<ConvFn>,
    appdata_ptr: *mut c_void,
}

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_start(
        service_name: *const c_char,
        user: *const c_char,
        pam_conversation: *const Conv,
        pamh: *mut *mut RawHandle,
    ) -> c_int;
    fn pam_end(pamh: *mut RawHandle, pam_status: c_int) -> c_int;
    fn pam_set_item(pamh: *mut RawHandle, item_type: c_int, item: *const c_void) -> c_int;
    fn pam_acct_mgmt(pamh: *mut RawHandle, flags: c_int) -> c_int;
    fn pam_setcred(pamh: *mut RawHandle, flags: c_int) -> c_int;
    fn pam_open_session(pamh: *mut RawHandle, flags: c_int) -> c_int;
    fn pam_close_session(pamh: *mut RawHandle, flags: c_int) -> c_int;
    fn pam_strerror(pamh: *mut RawHandle, errnum: c_int) -> *const c_char;
}

/// A failed PAM call, as libpam's text for its return code.
#[derive(Debug)]
pub struct PamError {
    message: String,
}

impl PamError {
    fn new(code: c_int) -> PamError {
        // SAFETY: Linux-PAM's pam_strerror ignores the handle (declared `UNUSED`) and returns
        // a pointer to a static, NUL-terminated string (or NULL), copied here at once.
        let text = unsafe { pam_strerror(ptr::null_mut(), code) };
        let message = if text.is_null() {
            format!("PAM error {code}")
        } else {
            // SAFETY: non-null, NUL-terminated and static (see above).
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        };
        PamError { message }
    }

    fn check(code: c_int) -> Result<(), PamError> {
        if code == PAM_SUCCESS {
            Ok(())
        } else {
            Err(PamError::new(code))
        }
    }

    fn bad_string() -> PamError {
        PamError::new(PAM_BUF_ERR)
    }
}

impl fmt::Display for PamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PamError {}

/// One PAM transaction (`pam_start` .. `pam_end`). Not `Send`: libpam handles belong to
/// the thread that made them.
#[derive(Debug)]
pub struct Transaction {
    handle: NonNull<RawHandle>,
    /// The status of the last module call, handed to `pam_end` (modules clean up by it).
    last_status: c_int,
}

impl Transaction {
    /// pam_start(3) for `service` and `user`, with the conversation that answers nothing.
    pub fn start(service: &str, user: &str) -> Result<Transaction, PamError> {
        let service = CString::new(service).map_err(|_| PamError::bad_string())?;
        let user = CString::new(user).map_err(|_| PamError::bad_string())?;
        let conv = Conv {
            conv: Some(refuse_prompts),
            appdata_ptr: ptr::null_mut(),
        };
        let mut handle = ptr::null_mut();
        // SAFETY: both strings are NUL-terminated and outlive the call; libpam copies
        // `conv` (and the strings) into the handle, so none need outlive it; `handle` is a
        // valid place for the result.
        let code = unsafe { pam_start(service.as_ptr(), user.as_ptr(), &conv, &mut handle) };
        PamError::check(code)?;
        let handle = NonNull::new(handle).ok_or_else(|| PamError::new(PAM_BUF_ERR))?;
        Ok(Transaction {
            handle,
            last_status: PAM_SUCCESS,
        })
    }

    /// pam_set_item(3) for a string item; libpam keeps its own copy.
    pub fn set_item(&mut self, item: Item, value: &str) -> Result<(), PamError> {
        let value = CString::new(value).map_err(|_| PamError::bad_string())?;
        // SAFETY: the handle is live (owned by self); PAM_TTY and PAM_RUSER take a
        // NUL-terminated string, which libpam duplicates before returning.
        let code = unsafe { pam_set_item(self.raw(), item as c_int, value.as_ptr().cast()) };
        self.record(code)
    }

    /// pam_acct_mgmt(3): the account stack (expiry, access rules).
    pub fn acct_mgmt(&mut self, flags: c_int) -> Result<(), PamError> {
        // SAFETY: the handle is live (owned by self); the flags are plain integers.
        let code = unsafe { pam_acct_mgmt(self.raw(), flags) };
        self.record(code)
    }

    /// pam_setcred(3) with one of the `PAM_*_CRED` flags.
    pub fn setcred(&mut self, flags: c_int) -> Result<(), PamError> {
        // SAFETY: the handle is live (owned by self); the flags are plain integers.
        let code = unsafe { pam_setcred(self.raw(), flags) };
        self.record(code)
    }

    /// pam_open_session(3).
    pub fn open_session(&mut self, flags: c_int) -> Result<(), PamError> {
        // SAFETY: the handle is live (owned by self); the flags are plain integers.
        let code = unsafe { pam_open_session(self.raw(), flags) };
        self.record(code)
    }

    /// pam_close_session(3).
    pub fn close_session(&mut self, flags: c_int) -> Result<(), PamError> {
        // SAFETY: the handle is live (owned by self); the flags are plain integers.
        let code = unsafe { pam_close_session(self.raw(), flags) };
        self.record(code)
    }

    fn raw(&self) -> *mut RawHandle {
        self.handle.as_ptr()
    }

    fn record(&mut self, code: c_int) -> Result<(), PamError> {
        self.last_status = code;
        PamError::check(code)
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        // SAFETY: the handle came from pam_start and is ended exactly once, here; nothing
        // uses it afterwards.
        unsafe { pam_end(self.raw(), self.last_status) };
    }
}

/// The conversation function: answers no prompt. If any message asks for input (echo on,
/// echo off, or a style unknown here) the whole conversation fails with `PAM_CONV_ERR` and
/// no response array is handed back. Messages that only inform are dropped, and answered
/// with an array of empty responses, allocated with calloc because libpam frees it.
///
/// # Safety
/// Called by libpam only: `msg` points to `num_msg` pointers to valid messages (the Linux
/// layout) and `resp` to a place for the response array, all live for the call.
unsafe extern "C" fn refuse_prompts(
    num_msg: c_int,
    msg: *const *const Message,
    resp: *mut *mut Response,
    _appdata: *mut c_void,
) -> c_int {
    let count = match usize::try_from(num_msg) {
        Ok(count @ 1..=PAM_MAX_NUM_MSG) => count,
        _ => return PAM_CONV_ERR,
    };
    if msg.is_null() || resp.is_null() {
        return PAM_CONV_ERR;
    }
    // SAFETY: libpam passes `num_msg` message pointers at `msg`, live for the call.
    let messages = unsafe { std::slice::from_raw_parts(msg, count) };
    let informs_only = messages.iter().all(|&message| {
        // SAFETY: a non-null message pointer from libpam points to a live pam_message.
        let style = (!message.is_null()).then(|| unsafe { (*message).msg_style });
        matches!(style, Some(PAM_ERROR_MSG | PAM_TEXT_INFO))
    });
    if !informs_only {
        return PAM_CONV_ERR;
    }
    // SAFETY: calloc has no preconditions; it returns zeroed memory (every `resp` NULL) or
    // NULL.
    let replies = unsafe { libc::calloc(count, size_of::<Response>()) };
    if replies.is_null() {
        return PAM_BUF_ERR;
    }
    // SAFETY: `resp` is non-null and is where libpam takes the response array from; libpam
    // owns (and frees) the array from here on.
    unsafe { *resp = replies.cast() };
    PAM_SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constants above are the installed header's (skipped where the header is absent).
    #[test]
    fn constants_match_the_pam_header() {
        let Ok(header) = std::fs::read_to_string("/usr/include/security/_pam_types.h") else {
            return;
        };
        let defined = |name: &str| -> i64 {
            let line = header
                .lines()
                .find(|l| l.split_whitespace().take(2).eq(["#define", name]))
                .unwrap_or_else(|| panic!("{name} not in the header"));
            let value = line
                .split_whitespace()
                .nth(2)
                .unwrap()
                .trim_end_matches('U');
            match value.strip_prefix("0x") {
                Some(hex) => i64::from_str_radix(hex, 16).unwrap(),
                None => value.parse().unwrap(),
            }
        };
        let ours: [(&str, i64); 14] = [
            ("PAM_SUCCESS", PAM_SUCCESS.into()),
            ("PAM_BUF_ERR", PAM_BUF_ERR.into()),
            ("PAM_CONV_ERR", PAM_CONV_ERR.into()),
            ("PAM_ERROR_MSG", PAM_ERROR_MSG.into()),
            ("PAM_TEXT_INFO", PAM_TEXT_INFO.into()),
            ("PAM_MAX_NUM_MSG", PAM_MAX_NUM_MSG as i64),
            ("PAM_SILENT", PAM_SILENT.into()),
            ("PAM_ESTABLISH_CRED", PAM_ESTABLISH_CRED.into()),
            ("PAM_DELETE_CRED", PAM_DELETE_CRED.into()),
            ("PAM_REINITIALIZE_CRED", PAM_REINITIALIZE_CRED.into()),
            ("PAM_TTY", Item::Tty as i64),
            ("PAM_RUSER", Item::RemoteUser as i64),
            ("PAM_PROMPT_ECHO_OFF", PAM_PROMPT_ECHO_OFF.into()),
            ("PAM_PROMPT_ECHO_ON", PAM_PROMPT_ECHO_ON.into()),
        ];
        for (name, value) in ours {
            assert_eq!(defined(name), value, "{name}");
        }
    }

    const PAM_PROMPT_ECHO_OFF: c_int = 1;
    const PAM_PROMPT_ECHO_ON: c_int = 2;

    fn converse(styles: &[c_int]) -> (c_int, *mut Response) {
        let texts: Vec<Message> = styles
            .iter()
            .map(|&msg_style| Message {
                msg_style,
                msg: c"text".as_ptr(),
            })
            .collect();
        let pointers: Vec<*const Message> = texts.iter().map(ptr::from_ref).collect();
        let mut replies = ptr::null_mut();
        let count = c_int::try_from(styles.len()).unwrap();
        // SAFETY: the arguments are laid out as libpam would pass them.
        let code =
            unsafe { refuse_prompts(count, pointers.as_ptr(), &mut replies, ptr::null_mut()) };
        (code, replies)
    }

    #[test]
    fn prompts_are_never_answered() {
        for styles in [
            &[PAM_PROMPT_ECHO_OFF][..],
            &[PAM_PROMPT_ECHO_ON],
            &[PAM_TEXT_INFO, PAM_PROMPT_ECHO_OFF],
            &[99],
        ] {
            let (code, replies) = converse(styles);
            assert_eq!(code, PAM_CONV_ERR, "{styles:?}");
            assert!(replies.is_null());
        }
        assert_eq!(converse(&[]).0, PAM_CONV_ERR);
    }

    #[test]
    fn information_gets_empty_responses() {
        let (code, replies) = converse(&[PAM_TEXT_INFO, PAM_ERROR_MSG]);
        assert_eq!(code, PAM_SUCCESS);
        assert!(!replies.is_null());
        // SAFETY: the conversation returned an array of two responses from calloc.
        let answers = unsafe { std::slice::from_raw_parts(replies, 2) };
        assert!(
            answers
                .iter()
                .all(|r| r.resp.is_null() && r.resp_retcode == 0)
        );
        // SAFETY: the array came from calloc and is freed once, as libpam would.
        unsafe { libc::free(replies.cast()) };
    }
}
