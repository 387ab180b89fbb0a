//! Where thousands of files are created at once: unpacked archives and the
//! kselftest's temporary tree.
//!
//! On ext4 without a journal (the disk of this project's machines), a new
//! file will not take an inode freed in the last minute or so, and
//! `ext4_create` scans past every such inode of its block group for every
//! file it makes: unpacking the archive right after another unpacked copy
//! was deleted took five times as long (BENCHMARKS.md). Two ways around it:
//!
//! - A tree unpacked on every run (the cell's `headers/`) is not deleted
//!   and made again but rewritten in place, its files keeping their inodes
//!   (`archive::extract_file_over`); [`clear_dir_except`] spares it when
//!   the cell directory is cleared.
//! - Other trees are made under a directory flagged as the top of a
//!   hierarchy (`chattr +T`): ext4's Orlov allocator then places each new
//!   subdirectory in a block group picked by a hash of its name, so a tree
//!   made under a random name usually lands away from the inodes just
//!   freed. Other file systems ignore or refuse the flag; nothing depends
//!   on it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result};

/// `FS_TOPDIR_FL` of `linux/fs.h`.
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Flag `dir` as the top of a hierarchy, where the file system has such a
/// flag. Best effort: a refusal changes only where new directories go.
pub fn spread_new_subdirs(dir: &Path) {
    let Ok(f) = File::open(dir) else { return };
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS and FS_IOC_SETFLAGS read and write one int
    // through a pointer to our own variable, on a descriptor we own.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) != 0 || flags & FS_TOPDIR_FL != 0 {
            return;
        }
        flags |= FS_TOPDIR_FL;
        let _ = libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
    }
}

/// A new directory under `parent` with a random name starting with
/// `prefix`, removed when dropped unless kept.
pub fn new_tree(parent: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    spread_new_subdirs(parent);
    tempfile::Builder::new().prefix(prefix).tempdir_in(parent).with_context(|| format!("cannot make a directory in {}", parent.display()))
}

/// Remove everything in `dir` but the entry named `keep`; make `dir` if
/// it is missing.
pub fn clear_dir_except(dir: &Path, keep: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        if e.file_name() == keep {
            continue;
        }
        let path = e.path();
        let gone = if e.file_type()?.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        gone.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearing_a_directory_spares_only_the_kept_entry() {
        let d = tempfile::tempdir().unwrap();
        let cell = d.path().join("cell");
        std::fs::create_dir_all(cell.join("headers/include")).unwrap();
        std::fs::create_dir_all(cell.join("kselftest/x")).unwrap();
        std::fs::write(cell.join("build.log"), b"x").unwrap();
        std::os::unix::fs::symlink(d.path(), cell.join("link")).unwrap();
        clear_dir_except(&cell, "headers").unwrap();
        let left: Vec<_> = std::fs::read_dir(&cell).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["headers"]);
        assert!(cell.join("headers/include").is_dir() && d.path().join("cell").is_dir(), "a link is removed, not followed");
        clear_dir_except(&d.path().join("new"), "headers").unwrap();
        assert!(d.path().join("new").is_dir());
    }
}
