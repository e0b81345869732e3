//! fanotify in file-handle mode (`FAN_REPORT_DFID_NAME`, with a pidfd per event), which
//! nix 0.32 can initialise but not parse, plus `open_by_handle_at(2)` and the pid-namespace
//! queries the runner's repository watcher needs (docs/threat-model.md row 23).
//!
//! Events are parsed from the byte buffer with bounds checks only (no pointer casts); the
//! `unsafe` blocks are the system calls and the adoption of the pidfds the kernel installs.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};

/// A directory as the kernel identifies it: file system id plus an opaque handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirHandle {
    pub fsid: [i32; 2],
    handle_type: i32,
    bytes: Vec<u8>,
}

/// One event: what happened (`FAN_*` mask bits), in which directory, to which name.
#[derive(Debug)]
pub struct Event {
    pub mask: MaskFlags,
    /// None when the event carries no directory record (overflow).
    pub dir: Option<DirHandle>,
    pub name: Vec<u8>,
    /// The acting process, None when it was gone by the time the event was read.
    pub process: Option<OwnedFd>,
}

/// A notification group reporting directory entry changes with directory handles.
pub struct Watch {
    group: Fanotify,
}

impl Watch {
    /// A non-blocking, close-on-exec notification-class group (needs CAP_SYS_ADMIN).
    pub fn new() -> Result<Watch, Errno> {
        let flags = InitFlags::FAN_CLASS_NOTIF
            | InitFlags::FAN_CLOEXEC
            | InitFlags::FAN_NONBLOCK
            | InitFlags::FAN_REPORT_PIDFD
            | InitFlags::from_bits_retain(libc::FAN_REPORT_DFID_NAME);
        let group = Fanotify::init(flags, EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE)?;
        Ok(Watch { group })
    }

    /// A group that reports only which directory had an entry made, removed or moved in
    /// or out (`FAN_REPORT_DIR_FID`, no name, no process): events of one directory merge in
    /// the queue, and reading them opens nothing. Needs CAP_SYS_ADMIN to make; reading
    /// needs no privilege, so the reader can drop all of it.
    pub fn new_dir_changes() -> Result<Watch, Errno> {
        let flags = InitFlags::FAN_CLASS_NOTIF
            | InitFlags::FAN_CLOEXEC
            | InitFlags::FAN_NONBLOCK
            | InitFlags::from_bits_retain(libc::FAN_REPORT_DIR_FID);
        let group = Fanotify::init(flags, EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE)?;
        Ok(Watch { group })
    }

    /// Takes over a group's descriptor (one made by [`Watch::new_dir_changes`], handed to
    /// another process).
    pub fn from_fd(fd: OwnedFd) -> Watch {
        // SAFETY: the callers pass a descriptor they own that came from
        // `new_dir_changes().into_fd()`, so it is a fanotify group.
        let group = unsafe { Fanotify::from_owned_fd(fd) };
        Watch { group }
    }

    /// The group's descriptor, for a close off the critical path ([`super::spawn::close_detached`]):
    /// the last close of a group with a file-system mark waits for an SRCU grace period
    /// (10-20 ms measured here).
    pub fn into_fd(self) -> OwnedFd {
        OwnedFd::from(self.group)
    }

    /// Watches the whole file system `fd` lives on for `mask`.
    pub fn mark_filesystem(&self, fd: BorrowedFd, mask: MaskFlags) -> Result<(), Errno> {
        self.group.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
            mask,
            fd,
            None::<&std::path::Path>,
        )
    }

    /// Ignores `mask` for the directory `dir` and the files in it (entries made, written or
    /// moved there), whatever marks report them.
    pub fn ignore_directory(&self, dir: BorrowedFd, mask: MaskFlags) -> Result<(), Errno> {
        self.group.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_IGNORE_SURV,
            mask | MaskFlags::FAN_ONDIR | MaskFlags::FAN_EVENT_ON_CHILD,
            dir,
            None::<&std::path::Path>,
        )
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.group.as_fd()
    }

    /// Reads the events that are queued; empty when none is (the group is non-blocking).
    pub fn read(&self) -> Result<Vec<Event>, Errno> {
        let mut buffer = vec![0u8; 64 * 1024];
        let n = match nix::unistd::read(self.fd(), &mut buffer) {
            Ok(n) => n,
            Err(Errno::EAGAIN) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(parse_events(&buffer[..n]))
    }
}

const METADATA_LEN: usize = 24;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Splits a read buffer into events (struct fanotify_event_metadata, then info records).
fn parse_events(buffer: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut offset = 0;
    while let Some(event_len) = u32_at(buffer, offset) {
        let event_len = event_len as usize;
        if event_len < METADATA_LEN || offset + event_len > buffer.len() {
            break;
        }
        let record = &buffer[offset..offset + event_len];
        let metadata_len = u16_at(record, 6).unwrap_or(0) as usize;
        let mut event = Event {
            mask: MaskFlags::from_bits_retain(u64_at(record, 8).unwrap_or(0)),
            dir: None,
            name: Vec::new(),
            process: None,
        };
        parse_info_records(record, metadata_len.max(METADATA_LEN), &mut event);
        events.push(event);
        offset += event_len;
    }
    events
}

fn parse_info_records(record: &[u8], mut at: usize, event: &mut Event) {
    // Header: info_type u8, pad u8, len u16.
    while let (Some(&kind), Some(len)) = (record.get(at), u16_at(record, at + 2)) {
        let len = len as usize;
        if len < 4 || at + len > record.len() {
            return;
        }
        let info = &record[at..at + len];
        match kind {
            libc::FAN_EVENT_INFO_TYPE_DFID_NAME | libc::FAN_EVENT_INFO_TYPE_DFID => {
                if let Some((dir, name)) = parse_dfid(info) {
                    event.dir = Some(dir);
                    event.name = name;
                }
            }
            libc::FAN_EVENT_INFO_TYPE_PIDFD => {
                if let Some(fd) = i32_at(info, 4).filter(|&fd| fd >= 0) {
                    // SAFETY: the kernel installed this descriptor in our table for this
                    // event; nothing else refers to it, so it is ours to own and close.
                    event.process = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            _ => {}
        }
        at += len;
    }
}

/// header(4) fsid(8) struct file_handle { handle_bytes u32, handle_type i32, f_handle[] }
/// and, for DFID_NAME, a NUL-terminated name.
fn parse_dfid(info: &[u8]) -> Option<(DirHandle, Vec<u8>)> {
    let fsid = [i32_at(info, 4)?, i32_at(info, 8)?];
    let handle_bytes = u32_at(info, 12)? as usize;
    let handle_type = i32_at(info, 16)?;
    let bytes = info.get(20..20 + handle_bytes)?.to_vec();
    let rest = &info[20 + handle_bytes..];
    let name = rest.split(|&b| b == 0).next().unwrap_or_default().to_vec();
    Some((
        DirHandle {
            fsid,
            handle_type,
            bytes,
        },
        name,
    ))
}

impl DirHandle {
    /// A handle as recorded earlier ([`handle_of`]), to compare with events' handles.
    pub fn new(fsid: [i32; 2], handle_type: i32, bytes: Vec<u8>) -> DirHandle {
        DirHandle {
            fsid,
            handle_type,
            bytes,
        }
    }

    /// The type and bytes of the handle, to record.
    pub fn parts(&self) -> (i32, &[u8]) {
        (self.handle_type, &self.bytes)
    }
}

/// The largest handle the kernel encodes (MAX_HANDLE_SZ).
const MAX_HANDLE_SZ: usize = 128;

/// The handle fanotify reports for the open directory `dir` in its directory records
/// (name_to_handle_at(2) with `AT_HANDLE_FID`, Linux 6.5+: the kernel's own encoding for
/// fanotify, needs no privilege). No fallback to a plain handle: one encoded another way
/// would match no event, and a tracker would then report changed directories as unchanged.
pub fn handle_of(dir: BorrowedFd) -> Result<DirHandle, Errno> {
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[] }, in u32
    // words so its header is aligned.
    let mut buffer = vec![0u32; 2 + MAX_HANDLE_SZ / 4];
    buffer[0] = MAX_HANDLE_SZ as u32;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: buffer is a struct file_handle whose handle_bytes says how much room f_handle
    // has (it has exactly that), aligned for it; mount_id is a valid c_int; the path is an
    // empty C string with AT_EMPTY_PATH, so `dir` itself is meant. Nothing is kept.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            c"".as_ptr(),
            buffer.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH | libc::AT_HANDLE_FID,
        )
    };
    Errno::result(rc)?;
    let handle_bytes = (buffer[0] as usize).min(MAX_HANDLE_SZ);
    let handle_type = buffer[1] as i32;
    let bytes: Vec<u8> = buffer[2..]
        .iter()
        .flat_map(|word| word.to_ne_bytes())
        .take(handle_bytes)
        .collect();
    Ok(DirHandle {
        fsid: fsid(dir)?,
        handle_type,
        bytes,
    })
}

/// Opens the directory `handle` names, on the file system `mount` lives on, with `flags`
/// (open_by_handle_at(2); needs CAP_DAC_READ_SEARCH).
pub fn open_by_handle(
    mount: BorrowedFd,
    handle: &DirHandle,
    flags: nix::fcntl::OFlag,
) -> Result<OwnedFd, Errno> {
    // struct file_handle, built in a u32 buffer so its header is aligned.
    let mut buffer = vec![handle.bytes.len() as u32, handle.handle_type as u32];
    buffer.extend(handle.bytes.chunks(4).map(|chunk| {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        u32::from_ne_bytes(word)
    }));
    // SAFETY: buffer holds a complete struct file_handle (handle_bytes, handle_type and
    // handle_bytes bytes of f_handle), aligned for it, and outlives the call; the result is
    // a new descriptor or -1.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            buffer.as_mut_ptr(),
            flags.bits(),
        )
    };
    let fd = Errno::result(rc)?;
    // SAFETY: open_by_handle_at returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The file system id of the file system `fd` lives on, as fanotify reports it.
pub fn fsid(fd: BorrowedFd) -> Result<[i32; 2], Errno> {
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills the struct it is given or fails.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), buf.as_mut_ptr()) };
    Errno::result(rc)?;
    // SAFETY: fstatfs succeeded, so the struct is initialised.
    let stat = unsafe { buf.assume_init() };
    // SAFETY: fsid_t is two c_ints (its field is private in libc); reading it as such is
    // what the kernel ABI defines.
    let pair: [i32; 2] = unsafe { std::mem::transmute(stat.f_fsid) };
    Ok(pair)
}

const PIDFD_GET_PID_NAMESPACE: libc::c_ulong = 0xFF05; // _IO(0xFF, 5)
const NS_GET_PARENT: libc::c_ulong = 0xB702; // _IO(0xB7, 0x2)

/// The pid namespace of the process `pidfd` refers to (Linux 6.11+), zombies included.
pub fn pid_namespace_of(pidfd: BorrowedFd) -> Result<OwnedFd, Errno> {
    // The argument must be 0: pidfs refuses the namespace requests with any other (EINVAL),
    // and a variadic call without one passes whatever a register holds.
    // SAFETY: the ioctl reads no memory of ours and returns a new descriptor or -1.
    let rc = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_PID_NAMESPACE as _, 0) };
    let fd = Errno::result(rc)?;
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The parent of the pid namespace `ns` (EPERM at the top, or outside ours).
pub fn parent_namespace(ns: BorrowedFd) -> Result<OwnedFd, Errno> {
    // SAFETY: the ioctl reads no memory of ours (its argument is 0, as for
    // `pid_namespace_of`) and returns a new descriptor or -1.
    let rc = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_PARENT as _, 0) };
    let fd = Errno::result(rc)?;
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    /// The namespace checks answer for a live process (they once failed for every one, an
    /// ioctl called without its argument): our own pid namespace, whose parent, seen from
    /// inside it, is out of reach.
    #[test]
    fn the_pid_namespace_of_a_live_process_is_found() {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id(), 0) };
        let fd = Errno::result(rc).expect("pidfd_open") as i32;
        // SAFETY: pidfd_open returned a fresh descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ns = pid_namespace_of(pidfd.as_fd()).expect("PIDFD_GET_PID_NAMESPACE");
        let ours = std::fs::metadata("/proc/self/ns/pid").unwrap();
        let found = nix::sys::stat::fstat(ns.as_fd()).unwrap();
        assert_eq!(found.st_ino, ours.ino());
        assert!(parent_namespace(ns.as_fd()).is_err());
    }

    #[test]
    fn parses_a_dfid_name_record_and_stops_at_garbage() {
        let mut record = Vec::new();
        let info_len = 4 + 8 + 8 + 8 + 5; // header, fsid, handle header, 8 bytes, "x.git\0"-ish
        let event_len = METADATA_LEN + info_len + 1;
        record.extend_from_slice(&(event_len as u32).to_ne_bytes());
        record.extend_from_slice(&[3, 0]);
        record.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        record.extend_from_slice(&0x100u64.to_ne_bytes()); // FAN_CREATE
        record.extend_from_slice(&(-1i32).to_ne_bytes());
        record.extend_from_slice(&7i32.to_ne_bytes());
        record.push(libc::FAN_EVENT_INFO_TYPE_DFID_NAME);
        record.push(0);
        record.extend_from_slice(&((info_len + 1) as u16).to_ne_bytes());
        record.extend_from_slice(&1i32.to_ne_bytes());
        record.extend_from_slice(&2i32.to_ne_bytes());
        record.extend_from_slice(&8u32.to_ne_bytes());
        record.extend_from_slice(&9i32.to_ne_bytes());
        record.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        record.extend_from_slice(b".git\0\0");
        record.extend_from_slice(&[0xff; 3]); // a truncated next event
        let events = parse_events(&record);
        assert_eq!(events.len(), 1);
        let dir = events[0].dir.as_ref().unwrap();
        assert_eq!(dir.fsid, [1, 2]);
        assert_eq!(dir.handle_type, 9);
        assert_eq!(dir.bytes, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(events[0].name, b".git");
        assert!(events[0].process.is_none());
    }
}
