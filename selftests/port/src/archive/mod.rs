//! Unpacking a kheaders archive (`.tar.xz`).
//!
//! The archive comes from a guest or a device, so it is untrusted: every entry
//! is checked before anything is written, entries that would land outside the
//! target directory are refused by name (the `tar` crate alone would skip
//! `..` entries silently), and the target only appears once the whole archive
//! unpacked cleanly. Nothing half-extracted is ever left where a caller could
//! use it.
//!
//! Memory and disk stay bounded whatever the archive says ([`Limits`]): an
//! xz dictionary larger than any xz preset's is refused before decoding, and
//! so is an archive that unpacks to more than a kheaders archive ever could
//! (a long name or an entry read into memory counts too).
//!
//! [`extract_file_over`] unpacks over an earlier extraction instead, keeping
//! its files (and so their inodes) where the archive has them too: on ext4
//! without a journal, each new file scans past every inode freed in the
//! last minute or so, so that deleting one unpacked tree and making the next
//! costs seconds, rewriting one costs nothing more than the writes.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// What an extraction produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub root: PathBuf,
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub bytes: u64,
}

/// How much an archive may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    /// The largest xz dictionary accepted: the decoder allocates it.
    dict_bytes: u64,
    /// The most the tar stream may hold once decompressed.
    unpacked_bytes: u64,
}

impl Limits {
    /// `xz -9`'s 64 MiB dictionary (the kheaders archive uses 8 MiB), and
    /// 256 MiB of tar: a kheaders archive unpacks to about 35 MB.
    const DEFAULT: Limits = Limits { dict_bytes: 64 << 20, unpacked_bytes: 256 << 20 };
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive is corrupt or truncated (not valid xz or tar): {0}")]
    Corrupt(String),
    #[error("the archive is refused, nothing extracted: {0}")]
    TooLarge(String),
    #[error("the archive is empty: it has no entries")]
    Empty,
    #[error(
        "the archive has {} unsafe entr{} (refused, nothing extracted): {}",
        .0.len(),
        if .0.len() == 1 { "y" } else { "ies" },
        .0.join("; ")
    )]
    Unsafe(Vec<String>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_owned(), source }
}

/// Unpack the `.tar.xz` file `archive` into `dest`, which must not exist yet.
pub fn extract_file(archive: &Path, dest: &Path) -> Result<Extracted, ArchiveError> {
    let file = File::open(archive).map_err(io_err(archive))?;
    extract(BufReader::new(file), dest)
}

/// Unpack the `.tar.xz` file `archive` into `dest`, which may hold an
/// earlier extraction: `dest` then ends up as a fresh extraction would,
/// but files already there with the same path are rewritten in place (or
/// left alone when their bytes are the same) and what the archive does not
/// have is removed. The same checks apply, and a failure leaves no `dest`.
pub fn extract_file_over(archive: &Path, dest: &Path) -> Result<Extracted, ArchiveError> {
    let file = File::open(archive).map_err(io_err(archive))?;
    extract_over(BufReader::new(file), dest)
}

/// Unpack a `.tar.xz` stream into `dest`, which must not exist yet.
///
/// Another thread decompresses, so that decoding overlaps with creating
/// the files, as with `tar -xJf`, where xz is a second process.
pub fn extract(xz: impl Read + Send, dest: &Path) -> Result<Extracted, ArchiveError> {
    extract_limited(xz, dest, false, Limits::DEFAULT)
}

/// [`extract`] over an earlier extraction, as [`extract_file_over`].
pub fn extract_over(xz: impl Read + Send, dest: &Path) -> Result<Extracted, ArchiveError> {
    extract_limited(xz, dest, true, Limits::DEFAULT)
}

/// [`extract`] (or, `over`, [`extract_over`]) within `limits`.
fn extract_limited(xz: impl Read + Send, dest: &Path, over: bool, limits: Limits) -> Result<Extracted, ArchiveError> {
    let (head, xz) = first_bytes(xz).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    if let Some(dict) = first_dict_size(&head) {
        if dict > limits.dict_bytes {
            return Err(ArchiveError::TooLarge(format!(
                "its xz dictionary is {} MiB, and at most {} MiB is accepted (xz -9 uses 64 MiB, the kheaders archive 8 MiB)",
                dict >> 20,
                limits.dict_bytes >> 20
            )));
        }
    }
    let xz = std::io::Cursor::new(head).chain(xz);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        scope.spawn(move || decode(lzma_rust2::XzReader::new(xz, true), &tx));
        // `rx` goes with the unpacker: if it stops early, the decoder's
        // next send fails and its thread ends.
        let over_limit = std::cell::Cell::new(false);
        let chunks = Chunks { rx, chunk: Vec::new(), pos: 0, left: limits.unpacked_bytes, over_limit: &over_limit };
        unpack(chunks, dest, over, limits.unpacked_bytes, &over_limit)
    })
}

/// The xz stream header and first block header: at most 12 + 1024 bytes.
const HEAD: usize = 12 + 1024;

/// Read up to [`HEAD`] bytes (fewer only at the end of the stream), and
/// give back the stream with them taken.
fn first_bytes<R: Read>(mut xz: R) -> std::io::Result<(Vec<u8>, R)> {
    let mut head = Vec::with_capacity(HEAD);
    (&mut xz).take(HEAD as u64).read_to_end(&mut head)?;
    Ok((head, xz))
}

/// The LZMA2 dictionary size that the first block of an xz stream asks
/// for, if `head` starts one (the kheaders archive has one block; a later
/// block's dictionary fills only as far as the unpacked-bytes limit lets
/// it).
fn first_dict_size(head: &[u8]) -> Option<u64> {
    const MAGIC: &[u8] = b"\xfd7zXZ\0";
    const LZMA2: u64 = 0x21;
    if !head.starts_with(MAGIC) {
        return None;
    }
    let block = head.get(12..)?;
    let header_len = (*block.first()? as usize + 1) * 4;
    // 0 is the index: a stream without blocks.
    if block[0] == 0 || block.len() < header_len {
        return None;
    }
    let flags = block[1];
    let mut at = 2;
    // Compressed and uncompressed sizes, when present.
    if flags & 0x40 != 0 {
        varint(block, &mut at)?;
    }
    if flags & 0x80 != 0 {
        varint(block, &mut at)?;
    }
    for _ in 0..=(flags & 3) {
        let (id, props) = (varint(block, &mut at)?, varint(block, &mut at)?);
        if id == LZMA2 && props == 1 {
            let p = *block.get(at)?;
            return match p {
                0..=39 => Some((2 | u64::from(p & 1)) << (p / 2 + 11)),
                40 => Some(u64::from(u32::MAX)),
                _ => None,
            };
        }
        at += props as usize;
    }
    None
}

/// Decompressed data, a chunk at a time, or the error that ended it.
type Chunk = std::io::Result<Vec<u8>>;

/// Send what `reader` gives in chunks of 1 MiB, until its end, its first
/// error or until nobody receives.
fn decode(mut reader: impl Read, tx: &std::sync::mpsc::SyncSender<Chunk>) {
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        let got = match reader.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        chunk.truncate(got);
        if tx.send(Ok(chunk)).is_err() {
            return;
        }
    }
}

/// xz's variable-length integer at `bytes[*at..]`; `at` moves past it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The receiving end of [`decode`], as a reader, that gives at most `left`
/// more bytes and then fails, setting `over_limit`.
struct Chunks<'a> {
    rx: std::sync::mpsc::Receiver<Chunk>,
    chunk: Vec<u8>,
    pos: usize,
    left: u64,
    over_limit: &'a std::cell::Cell<bool>,
}

impl Read for Chunks<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk?;
                    self.pos = 0;
                }
                // The decoder ended without an error: end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        if n as u64 > self.left {
            self.over_limit.set(true);
            return Err(std::io::Error::other("the unpacked-bytes limit is reached"));
        }
        self.left -= n as u64;
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Unpack a tar stream into `dest`, which must not exist yet unless `over`
/// (then it may hold an earlier extraction, whose files are reused). The
/// stream sets `over_limit` when it gives up at `limit` bytes.
fn unpack(stream: impl Read, dest: &Path, over: bool, limit: u64, over_limit: &std::cell::Cell<bool>) -> Result<Extracted, ArchiveError> {
    let earlier = std::fs::symlink_metadata(dest).ok();
    if earlier.as_ref().is_some_and(|m| !over || !m.is_dir()) {
        return Err(ArchiveError::Io {
            path: dest.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "extraction target already exists; remove it first"),
        });
    }
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    // Unpack next to the target and rename at the end: a failure leaves no
    // partial tree behind (the TempDir removes itself).
    let staging = tempfile::Builder::new().prefix(".kheaders-extract-").tempdir_in(parent).map_err(io_err(parent))?;
    // An earlier extraction becomes the staging tree (it replaces the empty
    // directory just made).
    let mut reuse = match earlier {
        Some(_) => {
            std::fs::rename(dest, staging.path()).map_err(io_err(dest))?;
            Some(Reuse::new(staging.path()).map_err(io_err(staging.path()))?)
        }
        None => None,
    };

    let mut tar = tar::Archive::new(stream);
    tar.set_preserve_permissions(true);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);

    let mut out = Extracted { root: dest.to_owned(), files: 0, dirs: 0, symlinks: 0, bytes: 0 };
    let mut unsafe_entries = Vec::new();
    let too_large = || ArchiveError::TooLarge(format!("it unpacks to more than {} MiB (a kheaders archive unpacks to about 35 MB)", limit >> 20));
    // A read that failed at the limit is not corruption.
    let stream_error = |what: String| if over_limit.get() { too_large() } else { ArchiveError::Corrupt(what) };
    let corrupt = |e: std::io::Error| stream_error(e.to_string());
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if entry.size() > limit {
            return Err(too_large());
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned());
        if let Err(why) = check_entry(&name, entry.header().entry_type(), link.as_deref()) {
            unsafe_entries.push(format!("{name}: {why}"));
            continue;
        }
        if !unsafe_entries.is_empty() {
            // Keep reading to name every unsafe entry, but write no more.
            continue;
        }
        match entry.header().entry_type() {
            EntryType::Directory => out.dirs += 1,
            EntryType::Symlink => out.symlinks += 1,
            _ => {
                out.files += 1;
                out.bytes += entry.size();
            }
        }
        if let Some(r) = reuse.as_mut() {
            match r.prepare(&mut entry, &name) {
                Ok(Prepared::Done) => continue,
                Ok(Prepared::Unpack) => {}
                Err(e) => return Err(ArchiveError::Io { path: staging.path().join(&name), source: e }),
            }
        }
        let unpacked = entry.unpack_in(staging.path()).map_err(|e| {
            use std::io::ErrorKind::*;
            // A short or undecodable stream shows up while an entry's data is
            // read; a failing write (disk full, read-only) is the host's fault.
            if matches!(e.kind(), UnexpectedEof | InvalidData | InvalidInput | Other) {
                stream_error(format!("{name}: {e}"))
            } else {
                ArchiveError::Io { path: staging.path().join(&name), source: e }
            }
        })?;
        if !unpacked {
            // unpack_in refuses what it considers outside the target: that
            // must never pass as extracted.
            unsafe_entries.push(format!("{name}: refused by the tar unpacker"));
        }
    }
    if !unsafe_entries.is_empty() {
        return Err(ArchiveError::Unsafe(unsafe_entries));
    }
    if out.files + out.dirs + out.symlinks == 0 {
        return Err(ArchiveError::Empty);
    }
    if let Some(r) = reuse {
        r.remove_the_rest().map_err(io_err(staging.path()))?;
    }
    let staging = staging.keep();
    std::fs::rename(&staging, dest).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staging);
        ArchiveError::Io { path: dest.to_owned(), source: e }
    })?;
    Ok(out)
}

/// An earlier extraction being turned into this one: which paths the
/// archive has named so far, so that the rest can go at the end.
struct Reuse {
    root: PathBuf,
    canonical_root: PathBuf,
    named: Vec<PathBuf>,
    inside_dirs: std::collections::HashSet<PathBuf>,
}

enum Prepared {
    /// The entry is in place: a regular file rewritten or already the same.
    Done,
    /// Whatever stood in the entry's way is gone: unpack it as usual.
    Unpack,
}

impl Reuse {
    fn new(root: &Path) -> std::io::Result<Reuse> {
        Ok(Reuse { root: root.to_owned(), canonical_root: root.canonicalize()?, named: Default::default(), inside_dirs: Default::default() })
    }

    /// Make room for `entry` (already checked: relative, no `..`). A regular
    /// file over a regular file of the earlier tree is written in place,
    /// not unlinked and made again; anything else in the way is removed.
    fn prepare<R: Read>(&mut self, entry: &mut tar::Entry<R>, name: &str) -> std::io::Result<Prepared> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        let rel: PathBuf = Path::new(name).components().filter(|c| matches!(c, Component::Normal(_))).collect();
        if rel.as_os_str().is_empty() {
            return Ok(Prepared::Unpack);
        }
        let path = self.root.join(&rel);
        self.named.push(rel.clone());
        // Nothing is looked at or removed through a directory that is not
        // (yet) in the tree: the tar crate makes it, or refuses an entry
        // whose directory resolves outside the tree.
        if !self.inside(path.parent()) {
            return Ok(Prepared::Unpack);
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else { return Ok(Prepared::Unpack) };
        let kind = entry.header().entry_type();
        if meta.is_dir() {
            if kind != EntryType::Directory {
                std::fs::remove_dir_all(&path)?;
                // What was below it may come back as other things.
                self.inside_dirs.clear();
            }
            return Ok(Prepared::Unpack);
        }
        // Only a lone regular file is written through; hard links and the
        // rest are made again as the tar crate makes them.
        let in_place = matches!(kind, EntryType::Regular | EntryType::Continuous) && meta.is_file() && meta.nlink() == 1;
        if !in_place {
            std::fs::remove_file(&path)?;
            return Ok(Prepared::Unpack);
        }
        // What the header claims is not trusted for the allocation.
        let mut data = Vec::with_capacity(entry.size().min(1 << 20) as usize);
        entry.read_to_end(&mut data)?;
        let rewrite = meta.len() != data.len() as u64 || std::fs::read(&path)? != data;
        // As the tar crate sets it: 0 becomes 1, which some tools take for
        // "no time".
        let mtime = entry.header().mtime()?.max(1);
        if rewrite || meta.mtime() != mtime as i64 || meta.mtime_nsec() != 0 {
            let mut f = std::fs::OpenOptions::new().write(true).truncate(rewrite).custom_flags(libc::O_NOFOLLOW).open(&path)?;
            if rewrite {
                std::io::Write::write_all(&mut f, &data)?;
            }
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime))?;
        }
        let mode = entry.header().mode()? & 0o7777;
        if meta.mode() & 0o7777 != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(Prepared::Done)
    }

    /// Whether `dir` exists and resolves to a directory inside the tree
    /// (no symlink leads out of it); asked once per directory.
    fn inside(&mut self, dir: Option<&Path>) -> bool {
        let Some(dir) = dir else { return false };
        if self.inside_dirs.contains(dir) {
            return true;
        }
        let inside = dir.canonicalize().is_ok_and(|c| c.starts_with(&self.canonical_root) && c.is_dir());
        if inside {
            self.inside_dirs.insert(dir.to_owned());
        }
        inside
    }

    /// Remove what the earlier tree had and the archive does not. The
    /// archive's paths are resolved as unpacked (an entry below a symlink
    /// to a directory is where the link leads), the tree walked as it is.
    fn remove_the_rest(self) -> std::io::Result<()> {
        let mut dirs: std::collections::HashMap<PathBuf, Option<PathBuf>> = Default::default();
        let mut keep = std::collections::HashSet::new();
        for rel in &self.named {
            let path = self.root.join(rel);
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { continue };
            let dir = dirs.entry(parent.to_owned()).or_insert_with(|| parent.canonicalize().ok());
            let Some(dir) = dir else { continue };
            let at = dir.join(name);
            keep.extend(at.ancestors().take_while(|a| a.starts_with(&self.canonical_root)).map(Path::to_owned));
        }
        for e in walkdir::WalkDir::new(&self.canonical_root).min_depth(1).contents_first(true) {
            let e = e.map_err(std::io::Error::from)?;
            if keep.contains(e.path()) {
                continue;
            }
            if e.file_type().is_dir() {
                std::fs::remove_dir(e.path())?;
            } else {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }
}

/// Why an entry may not be unpacked, if it may not.
pub fn check_entry(name: &str, kind: EntryType, link: Option<&str>) -> Result<(), String> {
    let path = Path::new(name);
    let depth = relative_depth(path).ok_or("absolute path or '..' component")?;
    if depth == 0 && !matches!(kind, EntryType::Directory) {
        return Err("entry names the target directory itself".into());
    }
    match kind {
        EntryType::Regular | EntryType::Directory | EntryType::Continuous => Ok(()),
        // GNU and pax metadata entries are consumed by the tar crate.
        EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader | EntryType::XGlobalHeader => Ok(()),
        EntryType::Symlink => {
            let target = link.ok_or("symlink without a target")?;
            let target = Path::new(target);
            if target.is_absolute() {
                return Err(format!("symlink to absolute path {}", target.display()));
            }
            // The link resolves relative to its own directory.
            let within = path.parent().unwrap_or(Path::new("")).join(target);
            match relative_depth_lexical(&within) {
                Some(_) => Ok(()),
                None => Err(format!("symlink to {} points outside the target", target.display())),
            }
        }
        EntryType::Link => {
            let target = link.ok_or("hard link without a target")?;
            match relative_depth(Path::new(target)) {
                Some(d) if d > 0 => Ok(()),
                _ => Err(format!("hard link to {target} points outside the target")),
            }
        }
        other => Err(format!("unsupported entry type {other:?}")),
    }
}

/// Depth of a relative path with no `..`: `None` if absolute or if it has `..`.
fn relative_depth(path: &Path) -> Option<usize> {
    let mut depth = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(depth)
}

/// Like [`relative_depth`], but `..` steps back, as long as it never climbs
/// above the start.
fn relative_depth_lexical(path: &Path) -> Option<usize> {
    let mut depth: usize = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1)?,
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(depth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Build a `.tar.xz` in memory. Entries are written with raw headers so
    /// that hostile names the `tar` builder would reject can be made too.
    fn txz(entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut raw = Vec::new();
        {
            let mut b = tar::Builder::new(&mut raw);
            for (name, kind, data, link) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(*kind);
                h.set_size(data.len() as u64);
                h.set_mode(if *kind == EntryType::Directory { 0o755 } else { 0o644 });
                h.set_mtime(0);
                // Write the name field directly: set_path refuses `..`.
                let field = &mut h.as_old_mut().name;
                field[..name.len()].copy_from_slice(name.as_bytes());
                if let Some(l) = link {
                    let lf = &mut h.as_old_mut().linkname;
                    lf[..l.len()].copy_from_slice(l.as_bytes());
                }
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            b.finish().unwrap();
        }
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&raw).unwrap();
        xz.finish().unwrap()
    }

    fn dest() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("out");
        (t, d)
    }

    #[test]
    fn extracts_a_plain_archive() {
        let data = txz(&[
            ("include/", EntryType::Directory, b"", None),
            ("include/a.h", EntryType::Regular, b"/* SPDX */\n", None),
            ("include/b.h", EntryType::Symlink, b"", Some("a.h")),
        ]);
        let (_t, d) = dest();
        let got = extract(&data[..], &d).unwrap();
        assert_eq!((got.files, got.dirs, got.symlinks, got.bytes), (1, 1, 1, 11));
        assert_eq!(std::fs::read(d.join("include/a.h")).unwrap(), b"/* SPDX */\n");
        assert_eq!(std::fs::read_link(d.join("include/b.h")).unwrap(), Path::new("a.h"));
    }

    #[test]
    fn refuses_dotdot_absolute_and_escaping_links_by_name() {
        let data = txz(&[
            ("ok.h", EntryType::Regular, b"x", None),
            ("../evil", EntryType::Regular, b"x", None),
            ("/etc/evil", EntryType::Regular, b"x", None),
            ("include/up", EntryType::Symlink, b"", Some("../../etc")),
            ("abs", EntryType::Symlink, b"", Some("/etc/passwd")),
            ("hard", EntryType::Link, b"", Some("../outside")),
        ]);
        let (t, d) = dest();
        let err = extract(&data[..], &d).unwrap_err();
        let ArchiveError::Unsafe(list) = &err else { panic!("{err}") };
        assert_eq!(list.len(), 5, "{list:?}");
        for name in ["../evil", "/etc/evil", "include/up", "abs", "hard"] {
            assert!(list.iter().any(|e| e.starts_with(name)), "{name} not named in {list:?}");
        }
        assert!(!d.exists(), "nothing may be extracted");
        // No staging directory is left behind either.
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn link_inside_the_tree_is_fine() {
        let data = txz(&[
            ("a/", EntryType::Directory, b"", None),
            ("a/b/", EntryType::Directory, b"", None),
            ("a/f", EntryType::Regular, b"x", None),
            ("a/b/l", EntryType::Symlink, b"", Some("../f")),
        ]);
        let (_t, d) = dest();
        extract(&data[..], &d).unwrap();
        assert_eq!(std::fs::read(d.join("a/b/l")).unwrap(), b"x");
    }

    #[test]
    fn refuses_device_nodes() {
        let data = txz(&[("dev", EntryType::Char, b"", None)]);
        let (_t, d) = dest();
        assert!(matches!(extract(&data[..], &d), Err(ArchiveError::Unsafe(_))));
    }

    #[test]
    fn truncated_and_garbage_archives_are_corrupt_and_leave_nothing() {
        let data = txz(&[("a.h", EntryType::Regular, &[7u8; 100_000], None)]);
        for bad in [&data[..data.len() / 2], b"not an xz file at all".as_slice()] {
            let (t, d) = dest();
            let err = extract(bad, &d).unwrap_err();
            assert!(matches!(err, ArchiveError::Corrupt(_)), "{err}");
            assert!(!d.exists());
            assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn entries_larger_than_the_decoders_chunks_arrive_intact() {
        // 1.5 MiB each, not a multiple of the 1 MiB chunks, all different.
        let body = |seed: u32| -> Vec<u8> { (0..1_572_869u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8).collect() };
        let (a, b, c) = (body(1), body(2), body(3));
        let data = txz(&[("a", EntryType::Regular, &a, None), ("b", EntryType::Regular, &b, None), ("c", EntryType::Regular, &c, None)]);
        let (_t, d) = dest();
        let got = extract(&data[..], &d).unwrap();
        assert_eq!((got.files, got.bytes), (3, 3 * 1_572_869));
        assert!(std::fs::read(d.join("a")).unwrap() == a && std::fs::read(d.join("b")).unwrap() == b && std::fs::read(d.join("c")).unwrap() == c);
    }

    /// A raw tar of one GNU long-name entry of `len` bytes, then a file.
    fn long_name_tar(len: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        let mut b = tar::Builder::new(&mut raw);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::GNULongName);
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_size(len as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, vec![b'a'; len].as_slice()).unwrap();
        let mut f = tar::Header::new_gnu();
        f.set_path("short").unwrap();
        f.set_size(1);
        f.set_cksum();
        b.append(&f, b"x".as_slice()).unwrap();
        b.finish().unwrap();
        drop(b);
        raw
    }

    fn xz(raw: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(raw).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn reads_the_first_blocks_dictionary_size() {
        let data = txz(&[("a.h", EntryType::Regular, b"x", None)]);
        assert_eq!(first_dict_size(&data), Some(8 << 20), "xz -6");
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 0);
        e.write_all(b"x").unwrap();
        assert_eq!(first_dict_size(&e.finish().unwrap()), Some(256 << 10), "xz -0");
        assert_eq!(first_dict_size(b"not xz"), None);
        assert_eq!(first_dict_size(&data[..14]), None, "a cut header");
    }

    #[test]
    fn a_dictionary_larger_than_the_limit_is_refused_before_decoding() {
        let mut data = txz(&[("a.h", EntryType::Regular, b"x", None)]);
        // One filter, no sizes: the dictionary byte follows LZMA2's id and
        // property size. 40 asks for 4 GiB; the header's CRC is not fixed,
        // so only a check made before decoding calls it too large.
        assert_eq!((data[13], data[14], data[15]), (0, 0x21, 1));
        data[16] = 40;
        let (t, d) = dest();
        let err = extract(&data[..], &d).unwrap_err();
        assert!(matches!(&err, ArchiveError::TooLarge(m) if m.contains("4095 MiB")), "{err}");
        let small = Limits { dict_bytes: 4 << 20, ..Limits::DEFAULT };
        let err = extract_limited(&txz(&[("a.h", EntryType::Regular, b"x", None)])[..], &d, false, small).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge(_)), "xz -6's 8 MiB over a 4 MiB limit: {err}");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_archive_that_unpacks_past_the_limit_is_refused_and_leaves_nothing() {
        let limits = Limits { unpacked_bytes: 1 << 20, ..Limits::DEFAULT };
        let part = vec![7u8; 600 << 10];
        let cases = [
            ("one entry larger than the limit", txz(&[("big", EntryType::Regular, &vec![7u8; 2 << 20], None)])),
            ("entries that add up past it", txz(&[("a", EntryType::Regular, &part, None), ("b", EntryType::Regular, &part, None)])),
            // The tar crate reads a long name into memory whole.
            ("a long name past it", xz(&long_name_tar(3 << 20))),
        ];
        for (what, data) in cases {
            let (t, d) = dest();
            let err = extract_limited(&data[..], &d, false, limits).unwrap_err();
            assert!(matches!(&err, ArchiveError::TooLarge(m) if m.contains("more than 1 MiB")), "{what}: {err}");
            assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0, "{what}: nothing left");
        }
        let (_t, d) = dest();
        extract_limited(&txz(&[("a", EntryType::Regular, &part, None)])[..], &d, false, limits).unwrap();
    }

    #[test]
    fn empty_archive_is_an_error() {
        let (_t, d) = dest();
        assert!(matches!(extract(&txz(&[])[..], &d), Err(ArchiveError::Empty)));
    }

    /// Every path under `root` with what it is: kind, bytes or link, mode, mtime.
    fn snapshot(root: &Path) -> Vec<(PathBuf, String)> {
        use std::os::unix::fs::MetadataExt;
        let mut v: Vec<_> = walkdir::WalkDir::new(root)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                let m = e.path().symlink_metadata().unwrap();
                let what = if m.is_symlink() {
                    format!("link {}", std::fs::read_link(e.path()).unwrap().display())
                } else if m.is_dir() {
                    format!("dir {:o}", m.mode() & 0o7777)
                } else {
                    format!("file {:o} {} {:?}", m.mode() & 0o7777, m.mtime(), std::fs::read(e.path()).unwrap())
                };
                (e.path().strip_prefix(root).unwrap().to_owned(), what)
            })
            .collect();
        v.sort();
        v
    }

    fn inode(p: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&p.symlink_metadata().unwrap())
    }

    #[test]
    fn over_an_earlier_tree_gives_a_fresh_extraction_keeping_the_files_inodes() {
        let earlier = txz(&[
            ("include/", EntryType::Directory, b"", None),
            ("include/a.h", EntryType::Regular, b"old", None),
            ("include/same.h", EntryType::Regular, b"same", None),
            ("include/gone.h", EntryType::Regular, b"x", None),
            ("include/b/", EntryType::Directory, b"", None),
            ("include/b/c.h", EntryType::Regular, b"x", None),
            ("include/l", EntryType::Symlink, b"", Some("a.h")),
            ("stale/", EntryType::Directory, b"", None),
            ("stale/x", EntryType::Regular, b"x", None),
            ("was_a_file", EntryType::Regular, b"x", None),
        ]);
        let now = txz(&[
            ("include/", EntryType::Directory, b"", None),
            ("include/a.h", EntryType::Regular, b"new and longer", None),
            ("include/same.h", EntryType::Regular, b"same", None),
            ("include/b", EntryType::Regular, b"now a file", None),
            ("include/l", EntryType::Symlink, b"", Some("same.h")),
            ("was_a_file/", EntryType::Directory, b"", None),
            ("was_a_file/y", EntryType::Regular, b"y", None),
            ("new.h", EntryType::Regular, b"n", None),
        ]);
        let (t, d) = dest();
        extract(&earlier[..], &d).unwrap();
        // As a fresh extraction leaves them, and then changed behind its back.
        let (a, same) = (inode(&d.join("include/a.h")), inode(&d.join("include/same.h")));
        std::fs::set_permissions(d.join("include/same.h"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let got = extract_over(&now[..], &d).unwrap();
        assert_eq!((got.files, got.dirs, got.symlinks), (5, 2, 1));

        let (_f, fresh) = dest();
        extract(&now[..], &fresh).unwrap();
        assert_eq!(snapshot(&d), snapshot(&fresh));
        assert_eq!((inode(&d.join("include/a.h")), inode(&d.join("include/same.h"))), (a, same), "rewritten in place");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1, "no staging directory left");
    }

    #[test]
    fn over_nothing_is_a_plain_extraction() {
        let data = txz(&[("include/a.h", EntryType::Regular, b"x", None)]);
        let (_t, d) = dest();
        extract_over(&data[..], &d).unwrap();
        assert_eq!(std::fs::read(d.join("include/a.h")).unwrap(), b"x");
    }

    #[test]
    fn a_bad_archive_over_an_earlier_tree_leaves_nothing() {
        let good = txz(&[("ok.h", EntryType::Regular, b"x", None)]);
        let hostile = txz(&[("ok.h", EntryType::Regular, b"y", None), ("../evil", EntryType::Regular, b"x", None)]);
        let (t, d) = dest();
        extract(&good[..], &d).unwrap();
        assert!(matches!(extract_over(&hostile[..], &d), Err(ArchiveError::Unsafe(_))));
        assert!(!d.exists() && !t.path().join("evil").exists());
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
        extract(&good[..], &d).unwrap();
        assert!(matches!(extract_over(&good[..good.len() / 2], &d), Err(ArchiveError::Corrupt(_))));
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_of_the_earlier_tree_is_never_written_or_removed_through() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("a.h"), b"outside").unwrap();
        std::fs::write(outside.path().join("b.h"), b"outside").unwrap();
        let (_t, d) = dest();
        extract(&txz(&[("ok.h", EntryType::Regular, b"x", None)])[..], &d).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("inc")).unwrap();
        // Through the link as it stands: refused.
        let through = txz(&[("inc/a.h", EntryType::Regular, b"mine", None)]);
        assert!(extract_over(&through[..], &d).is_err());
        // The archive's own directory replaces the link first: unpacked inside.
        extract(&txz(&[("ok.h", EntryType::Regular, b"x", None)])[..], &d).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("inc")).unwrap();
        let dir_first = txz(&[("inc/", EntryType::Directory, b"", None), ("inc/b.h", EntryType::Regular, b"mine", None)]);
        extract_over(&dir_first[..], &d).unwrap();
        assert_eq!(std::fs::read(d.join("inc/b.h")).unwrap(), b"mine");
        for f in ["a.h", "b.h"] {
            assert_eq!(std::fs::read(outside.path().join(f)).unwrap(), b"outside", "{f}");
        }
    }

    #[test]
    fn existing_target_is_not_overwritten() {
        let (_t, d) = dest();
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("keep"), b"mine").unwrap();
        let data = txz(&[("a.h", EntryType::Regular, b"x", None)]);
        assert!(extract(&data[..], &d).is_err());
        assert_eq!(std::fs::read(d.join("keep")).unwrap(), b"mine");
    }
}
