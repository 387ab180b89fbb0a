//! File operations relative to a directory file descriptor, none of which
//! follows a symlink: every path the unpacker touches is resolved one
//! component at a time from the target's own directory, with `O_NOFOLLOW`,
//! so no link, whoever made it and whenever, can lead a write, a `chmod`,
//! a `stat` or a removal out of the tree. (This is what `openat2`'s
//! `RESOLVE_NO_SYMLINKS` gives; done by hand, it works on every kernel.)

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name with a NUL byte"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An open directory of the tree.
pub struct Dir(OwnedFd);

/// What is at a name, not following a symlink there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, links: u64, mode: u32, mtime: i64, mtime_nsec: i64 },
    Symlink,
    Other,
}

impl Dir {
    /// The directory at `path` itself, which must not be a symlink.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let p = cstr(path.as_os_str())?;
        // SAFETY: open(2) with a NUL-terminated path; the fd is owned here.
        let fd = check(unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) })?;
        // SAFETY: a new fd that nothing else owns.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn fd(&self) -> libc::c_int {
        self.0.as_raw_fd()
    }

    /// The subdirectory `name`; an error (`ELOOP`, `ENOTDIR`) if it is a
    /// symlink or anything but a directory.
    pub fn sub(&self, name: &OsStr) -> io::Result<Dir> {
        let n = cstr(name)?;
        // SAFETY: openat(2) on our fd with a NUL-terminated name.
        let fd = check(unsafe { libc::openat(self.fd(), n.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) })?;
        // SAFETY: a new fd that nothing else owns.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// What `name` is, if it exists.
    pub fn kind(&self, name: &OsStr) -> io::Result<Option<Kind>> {
        let n = cstr(name)?;
        // SAFETY: stat is plain data; fstatat(2) fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above, with AT_SYMLINK_NOFOLLOW.
        if unsafe { libc::fstatat(self.fd(), n.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::NotFound { Ok(None) } else { Err(e) };
        }
        Ok(Some(match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFREG => Kind::File {
                size: st.st_size as u64,
                links: st.st_nlink as u64,
                mode: st.st_mode & 0o7777,
                mtime: st.st_mtime,
                mtime_nsec: st.st_mtime_nsec,
            },
            _ => Kind::Other,
        }))
    }

    pub fn mkdir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let n = cstr(name)?;
        // SAFETY: mkdirat(2) with a NUL-terminated name.
        check(unsafe { libc::mkdirat(self.fd(), n.as_ptr(), mode as libc::mode_t) }).map(drop)
    }

    /// `name` opened for reading and writing, created (empty, owner-only)
    /// if missing; never through a symlink.
    pub fn file(&self, name: &OsStr) -> io::Result<File> {
        let n = cstr(name)?;
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: openat(2) with a NUL-terminated name.
        let fd = check(unsafe { libc::openat(self.fd(), n.as_ptr(), flags, 0o600 as libc::c_uint) })?;
        // SAFETY: a new fd that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> io::Result<()> {
        let (t, n) = (cstr(target)?, cstr(name)?);
        // SAFETY: symlinkat(2) with NUL-terminated strings.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.fd(), n.as_ptr()) }).map(drop)
    }

    /// A hard link `name` here to `from`'s `source`, which is not followed.
    pub fn link(&self, from: &Dir, source: &OsStr, name: &OsStr) -> io::Result<()> {
        let (s, n) = (cstr(source)?, cstr(name)?);
        // SAFETY: linkat(2) without AT_SYMLINK_FOLLOW.
        check(unsafe { libc::linkat(from.fd(), s.as_ptr(), self.fd(), n.as_ptr(), 0) }).map(drop)
    }

    pub fn readlink(&self, name: &OsStr) -> io::Result<OsString> {
        let n = cstr(name)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: readlinkat(2) into a buffer of the length given.
        let len = unsafe { libc::readlinkat(self.fd(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
        buf.truncate(len);
        Ok(OsString::from_vec(buf))
    }

    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        // SAFETY: fchmod(2) on our own fd.
        check(unsafe { libc::fchmod(self.fd(), mode as libc::mode_t) }).map(drop)
    }

    /// Remove `name`, whatever it is; a directory with all it holds, each
    /// level opened without following a link.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        let n = cstr(name)?;
        if self.kind(name)? == Some(Kind::Dir) {
            let sub = self.sub(name)?;
            for (child, _) in sub.list()? {
                sub.remove(&child)?;
            }
            // SAFETY: unlinkat(2) with a NUL-terminated name.
            return check(unsafe { libc::unlinkat(self.fd(), n.as_ptr(), libc::AT_REMOVEDIR) }).map(drop);
        }
        // SAFETY: as above; a link is removed, never what it points to.
        check(unsafe { libc::unlinkat(self.fd(), n.as_ptr(), 0) }).map(drop)
    }

    /// The names in this directory, with whether each is a directory.
    pub fn list(&self) -> io::Result<Vec<(OsString, bool)>> {
        // SAFETY: a duplicate of our fd for fdopendir, which then owns it.
        let dup = check(unsafe { libc::fcntl(self.fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: fdopendir(3) takes the duplicate; closedir(3) below frees both.
        let dir = unsafe { libc::fdopendir(dup) };
        if dir.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: the duplicate was not taken over.
            unsafe { libc::close(dup) };
            return Err(e);
        }
        // SAFETY: from the start: a duplicate shares the offset.
        unsafe { libc::rewinddir(dir) };
        let mut names = Vec::new();
        loop {
            // SAFETY: readdir(3) on our own stream; the entry is read before the next call.
            let e = unsafe { libc::readdir(dir) };
            if e.is_null() {
                break;
            }
            // SAFETY: d_name is NUL-terminated.
            let name = unsafe { CStr::from_ptr((*e).d_name.as_ptr()) };
            let name = OsStr::from_bytes(name.to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_owned());
            }
        }
        // SAFETY: the stream opened above.
        unsafe { libc::closedir(dir) };
        names.into_iter().map(|n| Ok((n.clone(), self.kind(&n)? == Some(Kind::Dir)))).collect()
    }
}

/// Set a file's access and modification times to `secs`.
pub fn set_mtime(f: &File, secs: i64) -> io::Result<()> {
    let t = libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: 0 };
    // SAFETY: futimens(2) with two timespecs.
    check(unsafe { libc::futimens(f.as_raw_fd(), [t, t].as_ptr()) }).map(drop)
}

/// Set a file's mode.
pub fn set_mode(f: &File, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod(2) on an open file.
    check(unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}
