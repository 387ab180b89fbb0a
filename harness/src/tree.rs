//! The tree: unpack the kernel source once, apply the kernel's
//! series (`kernel/<version>/series`), install `selftests/kheaders` as
//! `tools/testing/selftests/kheaders`.
//!
//! Trees are shared, read-only sources for `O=` builds; a cell that builds
//! in-tree works on its own copy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cache::{key, Cache};
use crate::debsrc;
use crate::matrix::Kernel;
use crate::process::{run_logged, run_logged_ticking, tail};
use crate::progress::{self, Estimates};
use crate::Project;

#[derive(Debug, Clone)]
pub enum Source {
    /// A `.tar.xz` of a kernel tree with one top-level directory.
    Tarball(PathBuf),
    /// A kernel tree on disk, copied into the cache as it is; an edit
    /// anywhere in it makes a new copy (see [`manifest`]).
    Dir(PathBuf),
}

impl Source {
    /// The source `--tree` names (without it, each cell's kernel comes
    /// from Debian: [`crate::debsrc`]).
    pub fn from_arg(path: &Path) -> Result<Source> {
        if path.is_dir() {
            if !path.join("Makefile").is_file() || !path.join("Kconfig").is_file() {
                bail!("{} is not a kernel tree (no Makefile and Kconfig at its top)", path.display());
            }
            Ok(Source::Dir(std::path::absolute(path)?))
        } else if path.is_file() {
            Ok(Source::Tarball(std::path::absolute(path)?))
        } else {
            bail!("kernel tree {} does not exist", path.display())
        }
    }

    /// Identity of the source for cache keys. A tarball: its path, size
    /// and modification time (a new package version changes them). A
    /// directory: its path and a manifest of every file in it
    /// ([`manifest`]), so that an edit anywhere makes a new key.
    fn key(&self) -> Result<String> {
        match self {
            Source::Tarball(path) => {
                let meta = std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
                let mtime = meta.modified()?.duration_since(std::time::UNIX_EPOCH)?.as_nanos().to_le_bytes();
                Ok(key(&[b"tarball", path.as_os_str().as_encoded_bytes(), &meta.len().to_le_bytes(), &mtime]))
            }
            Source::Dir(path) => Ok(key(&[b"dir", path.as_os_str().as_encoded_bytes(), &manifest(path)?])),
        }
    }
}

/// Every entry under `dir` (but the object trees builds keep there) with
/// its type and mode and, but for directories, its size, inode, and
/// modification and change times to the nanosecond, as git's index tells
/// a changed file: any write to a file
/// sets its change time, which no program can set back. Reading the
/// metadata of a kernel tree's 90,000 files takes a fraction of a second;
/// reading their 1.5 GB would take seconds on every run.
pub fn manifest(dir: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let walk = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() != 1 || !e.file_name().to_string_lossy().starts_with(BUILD_DIR_PREFIX));
    for e in walk {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let m = e.metadata().with_context(|| format!("cannot stat {}", e.path().display()))?;
        out.extend_from_slice(e.path().strip_prefix(dir)?.as_os_str().as_encoded_bytes());
        // A directory's times change with its entries, which are listed
        // themselves (and an object tree made in the top one is no edit).
        let mut fields = vec![m.mode() as i64];
        if !m.is_dir() {
            fields.extend([m.size() as i64, m.ino() as i64, m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()]);
        }
        for n in fields {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    Ok(out)
}

/// A prepared, read-only source tree.
#[derive(Debug, Clone)]
pub struct Tree {
    pub path: PathBuf,
    /// Changes whenever the source or the series change.
    pub key: String,
}

/// The names of the object trees kept inside a source tree.
const BUILD_DIR_PREFIX: &str = ".khtest-build-";

impl Tree {
    /// The `O=` directory of the build keyed `build_key`: a directory of
    /// the source tree itself, so that kbuild's `srctree` is `..` and every
    /// path in a compile command and in the preprocessed source is relative.
    /// Then ccache shares the objects of any two trees (unpatched and
    /// patched, one series and the next) wherever their files are the
    /// same; with the tree's absolute path in them, it shared none.
    pub fn build_dir(&self, build_key: &str) -> PathBuf {
        self.path.join(format!("{BUILD_DIR_PREFIX}{build_key}"))
    }
}

/// The patches named by `kernel/<version>/series`, in order.
pub fn series(project: &Project, kernel: Kernel) -> Result<Vec<PathBuf>> {
    let dir = project.series_dir(kernel);
    let file = dir.join("series");
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let patches: Vec<PathBuf> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| dir.join(l)).collect();
    if patches.is_empty() {
        bail!("{} names no patch", file.display());
    }
    for p in &patches {
        if !p.is_file() {
            bail!("{} names {}, which does not exist", file.display(), p.display());
        }
    }
    Ok(patches)
}

/// The tree for a cell: `source` (`--tree`) or else `kernel`'s Debian
/// source, patched with `kernel`'s series or not, with the selftest in.
/// Unpacking the source (once) reports a status to `progress` each second.
pub fn prepare(cache: &Cache, source: Option<&Source>, project: &Project, kernel: Kernel, patched: bool, progress: &dyn Fn(&str)) -> Result<Tree> {
    let source = match source {
        Some(s) => s.clone(),
        None => Source::Tarball(debsrc::tarball(cache, kernel, progress)?),
    };
    let _lock = cache.lock("trees")?;
    let src_key = source.key()?;
    let unpacked = cache.get_or_make("src", &src_key, |dir| unpack(&source, dir, &Estimates::in_cache(cache.root()), progress))?;
    let unpacked = top_dir(&unpacked)?;

    let patches = if patched { series(project, kernel)? } else { Vec::new() };
    let mut parts: Vec<Vec<u8>> = vec![src_key.into_bytes(), vec![u8::from(patched)]];
    for p in &patches {
        parts.push(std::fs::read(p)?);
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let tree_key = key(&refs);
    let path = cache.get_or_make("trees", &tree_key, |dir| {
        copy_tree(&unpacked, dir)?;
        let log = dir.with_extension("patch.log");
        let _ = std::fs::remove_file(&log);
        for p in &patches {
            let st = run_logged(
                Command::new("patch").args(["-p1", "--batch", "--forward", "-d"]).arg(dir).arg("-i").arg(p),
                &log,
                Duration::from_secs(120),
            )?;
            if !st.success() {
                bail!("{} does not apply to {}:\n{}", p.display(), unpacked.display(), tail(&log, 15));
            }
        }
        Ok(())
    })?;
    // The kernel build never reads tools/testing/selftests, so the selftest
    // is not part of the key: it is installed anew when it changed instead,
    // and editing it costs no kernel rebuild.
    install_selftest(&project.selftest_dir(), &path.join("tools/testing/selftests/kheaders"))?;
    Ok(Tree { path, key: tree_key })
}

/// Make `dst` a copy of `src` unless it is one already. Another cell may
/// be running the installed kselftest meanwhile (the tree lock covers
/// installing, not running), so the new copy is made beside it and swapped
/// in with one rename: the script is never missing.
fn install_selftest(src: &Path, dst: &Path) -> Result<()> {
    if listing(dst).ok() == Some(listing(src)?) {
        return Ok(());
    }
    let parent = dst.parent().context("the selftest directory has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let new = tempfile::Builder::new().prefix(".kheaders-new-").tempdir_in(parent)?;
    copy_tree(src, new.path())?;
    if dst.exists() {
        exchange(new.path(), dst).with_context(|| format!("cannot swap {} into {}", new.path().display(), dst.display()))?;
    } else {
        std::fs::rename(new.path(), dst).with_context(|| format!("cannot rename {} to {}", new.path().display(), dst.display()))?;
    }
    // `new` now holds the old copy, removed with it.
    Ok(())
}

/// Swap two paths atomically (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that live across the call.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Every file under `dir` with its mode and bytes, in order.
fn listing(dir: &Path) -> Result<Vec<(PathBuf, u32, Vec<u8>)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut v = Vec::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let e = e?;
        let mode = e.metadata()?.permissions().mode();
        let bytes = if e.file_type().is_file() { std::fs::read(e.path())? } else { Vec::new() };
        v.push((e.path().strip_prefix(dir)?.to_owned(), mode, bytes));
    }
    Ok(v)
}

fn unpack(source: &Source, dir: &Path, estimates: &Estimates, progress: &dyn Fn(&str)) -> Result<()> {
    tracing::info!("unpacking {source:?} into the cache (once)");
    let log = dir.with_extension("log");
    let mut cmd = match source {
        Source::Tarball(t) => {
            let mut c = Command::new("tar");
            c.arg("-xf").arg(t).arg("-C").arg(dir);
            c
        }
        Source::Dir(d) => {
            let mut c = Command::new("cp");
            c.args(["-a", "--reflink=auto"]).arg(d.join(".")).arg(dir.join("tree"));
            c
        }
    };
    let (start, expected) = (std::time::Instant::now(), estimates.get("unpack-seconds"));
    let mut tick = || progress(&progress::status("tree: unpacking the source", start.elapsed().as_secs(), expected, "s", start.elapsed()));
    let st = run_logged_ticking(&mut cmd, &log, Duration::from_secs(900), &mut tick)?;
    if !st.success() {
        bail!("unpacking {source:?} failed:\n{}", tail(&log, 10));
    }
    estimates.set("unpack-seconds", start.elapsed().as_secs());
    Ok(())
}

/// The single kernel tree inside an unpacked source entry.
fn top_dir(entry: &Path) -> Result<PathBuf> {
    let dirs: Vec<PathBuf> =
        std::fs::read_dir(entry)?.filter_map(|e| e.ok()).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect();
    match dirs.as_slice() {
        [one] if one.join("Makefile").is_file() => Ok(one.clone()),
        _ => bail!("{} does not hold exactly one kernel tree", entry.display()),
    }
}

/// `cp -a` (reflinked where the filesystem can) of `from`'s contents into
/// `to`, less the object trees that builds keep in a source tree.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    let mut entries = Vec::new();
    for e in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let e = e?;
        if !e.file_name().to_string_lossy().starts_with(BUILD_DIR_PREFIX) {
            entries.push(e.path());
        }
    }
    if entries.is_empty() {
        return Ok(());
    }
    let o = crate::process::output_limited(Command::new("cp").args(["-a", "--reflink=auto"]).args(&entries).arg(to), Duration::from_secs(900))?;
    if !o.status.success() {
        bail!("copying {} to {} failed ({}): {}", from.display(), to.display(), o.status, String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_leaves_the_object_trees_behind() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("tree"), d.path().join("copy"));
        let tree = Tree { path: from.clone(), key: "k".into() };
        std::fs::create_dir_all(tree.build_dir("b1").join("kernel")).unwrap();
        std::fs::create_dir_all(from.join("kernel")).unwrap();
        std::fs::write(from.join("Makefile"), b"all:\n").unwrap();
        std::fs::write(from.join(".gitignore"), b"*.o\n").unwrap();
        copy_tree(&from, &to).unwrap();
        let mut got: Vec<String> = std::fs::read_dir(&to).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        got.sort();
        assert_eq!(got, [".gitignore", "Makefile", "kernel"]);
        assert_eq!(tree.build_dir("b1").parent(), Some(from.as_path()), "kbuild's srctree must be ..");
    }

    #[test]
    fn an_edit_anywhere_in_a_tree_changes_its_key_and_nothing_else_does() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("arch/x86/include/asm")).unwrap();
        std::fs::write(tree.join("Makefile"), b"all:\n").unwrap();
        std::fs::write(tree.join("Kconfig"), b"").unwrap();
        let deep = tree.join("arch/x86/include/asm/page.h");
        std::fs::write(&deep, b"#define PAGE_SHIFT 12\n").unwrap();
        let source = Source::from_arg(&tree).unwrap();
        let first = source.key().unwrap();
        assert_eq!(source.key().unwrap(), first, "the same tree has the same key");
        std::fs::create_dir_all(Tree { path: tree.clone(), key: first.clone() }.build_dir("b").join("kernel")).unwrap();
        assert_eq!(source.key().unwrap(), first, "an object tree inside is not the source");
        // Same size, and the modification time put back: the change time
        // still tells.
        let mtime = std::fs::metadata(&deep).unwrap().modified().unwrap();
        std::fs::write(&deep, b"#define PAGE_SHIFT 14\n").unwrap();
        std::fs::File::options().write(true).open(&deep).unwrap().set_modified(mtime).unwrap();
        assert_ne!(source.key().unwrap(), first, "an edit deep in the tree must change its key");
    }

    #[test]
    fn the_selftest_is_swapped_in_only_when_it_changed() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("tree/kheaders"));
        std::fs::create_dir_all(src.join("testmod")).unwrap();
        std::fs::write(src.join("run.sh"), b"one").unwrap();
        install_selftest(&src, &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("run.sh")).unwrap(), b"one");
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let before = ino(&dst.join("run.sh"));
        install_selftest(&src, &dst).unwrap();
        assert_eq!(ino(&dst.join("run.sh")), before, "an unchanged selftest is left alone");
        std::fs::write(src.join("run.sh"), b"two").unwrap();
        install_selftest(&src, &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("run.sh")).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path().join("tree")).unwrap().count(), 1, "the old copy is gone");
    }
}
