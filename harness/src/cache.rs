//! The content-addressed cache shared by runs: unpacked and patched trees,
//! kernel build directories.
//!
//! An entry is usable only once its `.khtest-complete` marker exists; it is
//! made in a temporary directory and renamed into place, so an entry that a
//! killed run half-wrote is detected and made again, never used. Runs that
//! share a cache take its lock.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const MARKER: &str = ".khtest-complete";

pub struct Cache {
    root: PathBuf,
}

/// Held while the cache is in use; dropping it releases the lock.
pub struct CacheLock {
    _file: File,
}

impl Cache {
    pub fn open(root: &Path) -> Result<Cache> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create the cache directory {} (set KHTEST_CACHE to move it)", root.display()))?;
        let probe = root.join(".khtest-write-probe");
        std::fs::write(&probe, b"")
            .with_context(|| format!("the cache directory {} is not writable (set KHTEST_CACHE to move it)", root.display()))?;
        let _ = std::fs::remove_file(probe);
        Ok(Cache { root: root.to_owned() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Take the lock named `name`, waiting (and saying so) if another run
    /// holds it.
    pub fn lock(&self, name: &str) -> Result<CacheLock> {
        self.lock_saying(name, &|path| tracing::warn!("waiting for {}: another cell, or another khtest run, holds it", path.display()))
    }

    /// Take the lock named `name`; if another holder has it, call
    /// `waiting` with the lock's path first, then wait.
    pub fn lock_saying(&self, name: &str, waiting: &dyn Fn(&Path)) -> Result<CacheLock> {
        let path = self.root.join(format!("{name}.lock"));
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let fd = file.as_raw_fd();
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            waiting(&path);
            // SAFETY: as above.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                bail!("cannot lock {}: {}", path.display(), std::io::Error::last_os_error());
            }
        }
        Ok(CacheLock { _file: file })
    }

    /// The entry `kind/key`, made by `make` (which fills the directory it is
    /// given) unless a complete one exists. Call with the lock held.
    pub fn get_or_make(&self, kind: &str, key: &str, make: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        let dir = self.root.join(kind);
        let entry = dir.join(key);
        if entry.join(MARKER).exists() {
            return Ok(entry);
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if entry.exists() {
            tracing::warn!("{} is incomplete (an earlier run was stopped): making it again", entry.display());
            std::fs::remove_dir_all(&entry).with_context(|| format!("cannot remove {}", entry.display()))?;
        }
        let tmp = dir.join(format!("{key}.partial"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp)?;
        make(&tmp)?;
        std::fs::write(tmp.join(MARKER), b"")?;
        std::fs::rename(&tmp, &entry).with_context(|| format!("cannot rename {} to {}", tmp.display(), entry.display()))?;
        Ok(entry)
    }
}

/// A short content key over byte strings: the first 64 bits of their
/// SHA-256, each part preceded by its length.
pub fn key(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_entries_are_made_again_and_complete_ones_reused() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let _l = c.lock("test").unwrap();
        // A killed run left a half-written entry without its marker.
        std::fs::create_dir_all(d.path().join("trees/k1")).unwrap();
        std::fs::write(d.path().join("trees/k1/half"), b"").unwrap();
        let mut made = 0;
        let e = c
            .get_or_make("trees", "k1", |p| {
                made += 1;
                std::fs::write(p.join("whole"), b"").map_err(Into::into)
            })
            .unwrap();
        assert!(e.join("whole").exists() && !e.join("half").exists());
        c.get_or_make("trees", "k1", |_| {
            made += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(made, 1);
    }

    #[test]
    fn a_failed_make_leaves_no_entry() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        assert!(c.get_or_make("trees", "k", |_| bail!("boom")).is_err());
        assert!(!d.path().join("trees/k").exists());
    }

    #[test]
    fn a_second_holder_waits_for_the_lock() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path()).unwrap();
        let first = c.lock("build-x").unwrap();
        let root = d.path().to_owned();
        let start = std::time::Instant::now();
        let second = std::thread::spawn(move || {
            let _l = Cache::open(&root).unwrap().lock("build-x").unwrap();
            start.elapsed()
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
        let waited = second.join().unwrap();
        assert!(waited >= std::time::Duration::from_millis(300), "the second lock did not wait: {waited:?}");
    }

    #[test]
    fn keys_depend_on_boundaries() {
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        assert_eq!(key(&[b"x"]).len(), 16);
    }
}
