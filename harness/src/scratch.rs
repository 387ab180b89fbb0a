//! Where thousands of files are created at once: unpacked archives and the
//! kselftest's temporary tree.
//!
//! On ext4 without a journal (the disk of this project's machines), a new
//! file will not take an inode freed in the last minute, and `ext4_create`
//! scans past every such inode of its block group for every file it makes:
//! unpacking the archive right after another unpacked copy was deleted took
//! five times as long (BENCHMARKS.md). A directory flagged as the top of a
//! hierarchy (`chattr +T`) makes ext4's Orlov allocator place each new
//! subdirectory in a block group picked by a hash of its name, so a tree
//! made under a random name usually lands away from the inodes just freed.
//! Other file systems ignore or refuse the flag; nothing depends on it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

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

/// Fill `dest` (replacing what was there) by `fill`, which makes the tree
/// at the path it is given, inside a new directory beside `dest`; the tree
/// is then moved into place, even when `fill` failed: a failing cell keeps
/// what it got. Errors are those of making and moving the directories;
/// `fill`'s result is returned.
pub fn replace_tree<T>(dest: &Path, fill: impl FnOnce(&Path) -> T) -> Result<T> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let new = new_tree(parent, &format!(".{name}-"))?;
    let tree: PathBuf = new.path().join(&*name);
    let filled = fill(&tree);
    if dest.exists() {
        std::fs::remove_dir_all(dest).with_context(|| format!("cannot remove {}", dest.display()))?;
    }
    if tree.exists() {
        std::fs::rename(&tree, dest).with_context(|| format!("cannot rename {} to {}", tree.display(), dest.display()))?;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_tree_holds_only_the_new_files() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("headers");
        std::fs::create_dir_all(dest.join("old")).unwrap();
        replace_tree(&dest, |t| {
            assert!(!t.exists(), "fill makes the tree itself");
            std::fs::create_dir(t)?;
            std::fs::write(t.join("new"), b"x")
        })
        .unwrap()
        .unwrap();
        assert!(dest.join("new").is_file() && !dest.join("old").exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "the temporary directory was moved, not left");
    }

    #[test]
    fn a_failed_fill_is_kept_in_place_of_the_old_tree() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("headers");
        std::fs::create_dir_all(dest.join("old")).unwrap();
        let r: Result<(), &str> = replace_tree(&dest, |t| {
            std::fs::create_dir(t).unwrap();
            std::fs::write(t.join("half"), b"x").unwrap();
            Err("corrupt archive")
        })
        .unwrap();
        assert!(r.is_err() && dest.join("half").exists() && !dest.join("old").exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
