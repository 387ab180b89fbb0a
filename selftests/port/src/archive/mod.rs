//! Unpacking a kheaders archive (`.tar.xz`) that nobody vouches for.
//!
//! The archive comes from a guest or a device, and the device-side install
//! command unpacks it as root, so it is hostile until proved otherwise. What
//! is refused and what is bounded, and to what, is `docs/unpacker.md`, the
//! unpacker's threat model. In short:
//!
//! - the whole xz file is verified, not only what tar reads: every stream
//!   header, footer and index, the padding ([`xz`]), and every block's check
//!   (the decoder, drained to the end): a damaged archive is
//!   [`ArchiveError::Damaged`], never extracted;
//! - every block's dictionary is checked before a decoder allocates it, and
//!   every other size is bounded ([`Limits`]);
//! - nothing is written, `chmod`ed, `stat`ed or removed through a symlink:
//!   every path is resolved from the target's own directory one component
//!   at a time without following links ([`fsat`]); links whose target
//!   leaves the tree, through chains of links too, are refused;
//! - setuid, setgid, sticky and group or world write bits are dropped;
//! - a failure leaves nothing: no target, no staging directory.
//!
//! [`extract_file_over`] unpacks over an earlier extraction instead, keeping
//! its files (and so their inodes) where the archive has them too: on ext4
//! without a journal, each new file scans past every inode freed in the
//! last minute or so, so that deleting one unpacked tree and making the next
//! costs seconds, rewriting one costs nothing more than the writes.

mod fsat;
mod unpack;
mod xz;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use unpack::check_entry;

/// What an extraction produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub root: PathBuf,
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub bytes: u64,
}

/// How much an archive may ask for. A kheaders archive is about 5 MB,
/// unpacks to about 35 MB in 6,000 entries, and uses an 8 MiB dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The compressed file, read into memory whole to check it.
    pub compressed_bytes: u64,
    /// The largest xz dictionary of any block: the decoder allocates it.
    pub dict_bytes: u64,
    /// The tar stream once decompressed, and the disk the tree takes (each
    /// entry counted in whole 4 KiB blocks, a directory or link as one).
    pub unpacked_bytes: u64,
    /// Entries, and so inodes.
    pub entries: u64,
    /// One path or link target.
    pub path_bytes: usize,
    /// All names together (kept to judge links and to clean up after).
    pub names_bytes: u64,
    /// One GNU long name or PAX header.
    pub meta_bytes: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        compressed_bytes: 64 << 20,
        dict_bytes: 64 << 20,
        unpacked_bytes: 256 << 20,
        entries: 65_536,
        path_bytes: 4096,
        names_bytes: 16 << 20,
        meta_bytes: 64 << 10,
    };
}

/// How many offending entries an error names; the rest are counted.
const NAMED: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive is damaged (not a valid .tar.xz): {0}")]
    Damaged(String),
    #[error("the archive is refused, nothing extracted: {0}")]
    TooLarge(String),
    #[error("the archive is empty: it has no entries")]
    Empty,
    #[error(
        "the archive has {count} unsafe entr{} (refused, nothing extracted): {}{}",
        if *.count == 1 { "y" } else { "ies" },
        .first.join("; "),
        if *.count > .first.len() { format!("; and {} more", .count - .first.len()) } else { String::new() }
    )]
    Unsafe { count: usize, first: Vec<String> },
    #[error("{0}: not an archive file (a directory, or nothing that can be read as one)")]
    NotAFile(PathBuf),
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

/// At most 200 bytes of `name`, for an error line.
fn shown(name: &str) -> String {
    match name.char_indices().nth(200) {
        Some((i, _)) => format!("{}... ({} bytes)", &name[..i], name.len()),
        None => name.to_owned(),
    }
}

/// Unpack the `.tar.xz` file `archive` into `dest`, which must not exist yet.
pub fn extract_file(archive: &Path, dest: &Path) -> Result<Extracted, ArchiveError> {
    extract(open(archive)?, dest)
}

/// Unpack the `.tar.xz` file `archive` into `dest`, which may hold an
/// earlier extraction: `dest` then ends up as a fresh extraction would,
/// but files already there with the same path are rewritten in place
/// (only where their bytes differ) and what the archive does not have is
/// removed. The same checks apply, and a failure leaves no `dest`.
pub fn extract_file_over(archive: &Path, dest: &Path) -> Result<Extracted, ArchiveError> {
    extract_over(open(archive)?, dest)
}

fn open(archive: &Path) -> Result<File, ArchiveError> {
    let file = File::open(archive).map_err(io_err(archive))?;
    if file.metadata().map_err(io_err(archive))?.is_dir() {
        return Err(ArchiveError::NotAFile(archive.to_owned()));
    }
    Ok(file)
}

/// Unpack a `.tar.xz` stream into `dest`, which must not exist yet.
pub fn extract(xz: impl Read, dest: &Path) -> Result<Extracted, ArchiveError> {
    extract_limited(xz, dest, false, Limits::DEFAULT)
}

/// [`extract`] over an earlier extraction, as [`extract_file_over`].
pub fn extract_over(xz: impl Read, dest: &Path) -> Result<Extracted, ArchiveError> {
    extract_limited(xz, dest, true, Limits::DEFAULT)
}

/// [`extract`] (or, `over`, [`extract_over`]) within `limits`: the file is
/// checked whole, then decoded on another thread (as `tar -xJf` has xz in
/// a second process) while its entries are written.
pub fn extract_limited(xz: impl Read, dest: &Path, over: bool, limits: Limits) -> Result<Extracted, ArchiveError> {
    let r = checked_then_unpacked(xz, dest, over, limits);
    // Over an earlier extraction too, a failure leaves no target (the
    // unpacker has made it its staging tree, or it is as it was).
    if r.is_err() && over && std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
        let _ = std::fs::remove_dir_all(dest);
    }
    r
}

fn checked_then_unpacked(mut xz: impl Read, dest: &Path, over: bool, limits: Limits) -> Result<Extracted, ArchiveError> {
    let mut file = Vec::new();
    (&mut xz).take(limits.compressed_bytes + 1).read_to_end(&mut file).map_err(|e| match e.raw_os_error() {
        Some(libc::EISDIR) => ArchiveError::NotAFile(PathBuf::from("(input)")),
        _ => ArchiveError::Io { path: PathBuf::from("(input)"), source: e },
    })?;
    if file.len() as u64 > limits.compressed_bytes {
        return Err(ArchiveError::TooLarge(format!("it is over {} MiB compressed", limits.compressed_bytes >> 20)));
    }
    let layout = xz::check(&file, &limits)?;
    let consumed = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let (file, consumed) = (&file, &consumed);
        let streams = layout.streams.clone();
        scope.spawn(move || decode(file, &streams, consumed, &tx));
        // `rx` goes with the unpacker: if it stops early, the decoder's
        // next send fails and its thread ends.
        let stream = Stream { rx, chunk: Vec::new(), pos: 0, left: limits.unpacked_bytes, total: 0, failure: None };
        let damage = |what: &str| {
            let at = consumed.load(Ordering::Relaxed);
            let block = layout.block_at(at).map(|b| format!(" (block {b} of {})", layout.blocks.len())).unwrap_or_default();
            ArchiveError::Damaged(format!("near byte {at}{block}: {what}"))
        };
        unpack::unpack(stream, dest, over, &limits, layout.uncompressed, &damage)
    })
}

/// Decompressed data, a chunk at a time, or why it ended early.
type Chunk = Result<Vec<u8>, String>;

/// Send what the xz decoder gives of each of `file`'s `streams` (byte
/// ranges) in chunks of 1 MiB, to the end of the file (every block's check,
/// every index and footer are verified on the way), its first error, or
/// until nobody receives. A panic in the decoder is an error like any
/// other. `consumed` tells how far into `file` it got.
fn decode(file: &[u8], streams: &[std::ops::Range<usize>], consumed: &AtomicU64, tx: &std::sync::mpsc::SyncSender<Chunk>) {
    struct Counted<'a>(&'a [u8], &'a AtomicU64);
    impl Read for Counted<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(out)?;
            self.1.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }
    }
    let run = std::panic::AssertUnwindSafe(|| {
        for stream in streams {
            consumed.store(stream.start as u64, Ordering::Relaxed);
            let reader = lzma_rust2::XzReader::new(Counted(&file[stream.clone()], consumed), false);
            if !send_all(reader, tx) {
                return;
            }
        }
    });
    if let Err(panic) = std::panic::catch_unwind(run) {
        let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
        let _ = tx.send(Err(format!("the xz decoder failed ({what})")));
    }
}

/// Send what `reader` gives; whether it ended cleanly and somebody still
/// receives.
fn send_all(mut reader: impl Read, tx: &std::sync::mpsc::SyncSender<Chunk>) -> bool {
    {
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            let got = match reader.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return false;
                }
            };
            chunk.truncate(got);
            if tx.send(Ok(chunk)).is_err() {
                return false;
            }
        }
    }
}

/// Why the decompressed stream ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The decoder found damage.
    Damaged(String),
    /// More than the unpacked-bytes limit.
    OverLimit,
}

/// The receiving end of [`decode`], as a reader that gives at most `left`
/// more bytes; after a failure, [`Stream::failure`] says which.
pub(crate) struct Stream {
    rx: std::sync::mpsc::Receiver<Chunk>,
    chunk: Vec<u8>,
    pos: usize,
    left: u64,
    /// Bytes given so far.
    total: u64,
    failure: Option<Failure>,
}

impl Stream {
    pub(crate) fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    fn fail(&mut self, f: Failure) -> std::io::Error {
        self.failure = Some(f);
        std::io::Error::other("the archive's stream ended early")
    }
}

impl Read for Stream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(why)) => return Err(self.fail(Failure::Damaged(why))),
                // The decoder ended without an error: end of the file.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        if n as u64 > self.left {
            return Err(self.fail(Failure::OverLimit));
        }
        self.left -= n as u64;
        self.total += n as u64;
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tar::EntryType;

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
        xz(&raw)
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
        let ArchiveError::Unsafe { count, first: list } = &err else { panic!("{err}") };
        assert_eq!((*count, list.len()), (5, 5), "{list:?}");
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
        assert!(matches!(extract(&data[..], &d), Err(ArchiveError::Unsafe { .. })));
    }

    #[test]
    fn truncated_and_garbage_archives_are_corrupt_and_leave_nothing() {
        let data = txz(&[("a.h", EntryType::Regular, &[7u8; 100_000], None)]);
        for bad in [&data[..data.len() / 2], b"not an xz file at all".as_slice()] {
            let (t, d) = dest();
            let err = extract(bad, &d).unwrap_err();
            assert!(matches!(err, ArchiveError::Damaged(_)), "{err}");
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
        xz_preset(raw, 6)
    }

    fn xz_preset(raw: &[u8], preset: u32) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), preset);
        e.write_all(raw).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_dictionary_larger_than_the_limit_is_refused_before_decoding() {
        let mut data = txz(&[("a.h", EntryType::Regular, b"x", None)]);
        // One filter, no sizes: the dictionary byte follows LZMA2's id and
        // property size. 40 asks for 4 GiB; the header's CRC is not fixed,
        // so only a check made before decoding calls it too large.
        assert_eq!((data[13], data[14], data[15]), (0, 0x21, 1));
        data[16] = 40;
        fix_block_header_crc(&mut data);
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
        assert!(matches!(extract_over(&hostile[..], &d), Err(ArchiveError::Unsafe { .. })));
        assert!(!d.exists() && !t.path().join("evil").exists());
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
        extract(&good[..], &d).unwrap();
        assert!(matches!(extract_over(&good[..good.len() / 2], &d), Err(ArchiveError::Damaged(_))));
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
        // The earlier tree's link is in the way of the archive's directory:
        // it goes (never followed), and the directory is made.
        let through = txz(&[("inc/a.h", EntryType::Regular, b"mine", None)]);
        extract_over(&through[..], &d).unwrap();
        assert!(d.join("inc").symlink_metadata().unwrap().is_dir());
        // The archive's own directory replaces the link first: unpacked inside.
        std::fs::remove_dir_all(&d).unwrap();
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

    /// The block header at byte 12 with its CRC32 made right again.
    fn fix_block_header_crc(data: &mut [u8]) {
        let len = (usize::from(data[12]) + 1) * 4;
        let crc = xz::crc32(&data[12..12 + len - 4]);
        data[12 + len - 4..12 + len].copy_from_slice(&crc.to_le_bytes());
    }

    /// Nothing but `keep` is left in `dir`.
    fn only(dir: &Path, keep: &[&str]) {
        let mut left: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, keep, "left in {}", dir.display());
    }

    /// Bytes that xz cannot squeeze much: a bit flip lands in LZMA data.
    fn noise(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8).collect()
    }

    #[test]
    fn one_flipped_bit_anywhere_in_the_xz_file_is_damage_and_leaves_nothing() {
        let data = txz(&[("a.h", EntryType::Regular, &noise(200_000, 1), None), ("b.h", EntryType::Regular, b"tail", None)]);
        for at in [data.len() / 3, data.len() / 2, data.len() - 40] {
            let mut bad = data.clone();
            bad[at] ^= 0x10;
            let (t, d) = dest();
            let err = extract(&bad[..], &d).unwrap_err();
            assert!(matches!(&err, ArchiveError::Damaged(m) if m.contains("byte")), "a bit flipped at {at}: {err}");
            only(t.path(), &[]);
        }
    }

    #[test]
    fn a_cut_index_or_footer_or_junk_after_is_damage() {
        let data = txz(&[("a.h", EntryType::Regular, b"x", None)]);
        for (what, bad) in [
            ("footer cut", data[..data.len() - 12].to_vec()),
            ("index cut", data[..data.len() - 16].to_vec()),
            ("junk after", [data.clone(), b"junk".to_vec()].concat()),
        ] {
            let (t, d) = dest();
            assert!(matches!(extract(&bad[..], &d), Err(ArchiveError::Damaged(_))), "{what}");
            only(t.path(), &[]);
        }
    }

    #[test]
    fn concatenated_streams_one_of_them_empty_are_one_archive() {
        let mut raw = Vec::new();
        {
            let mut b = tar::Builder::new(&mut raw);
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, "a.h", &b"x"[..]).unwrap();
            b.finish().unwrap();
        }
        let data = [xz(&raw[..512]), xz(b""), vec![0; 4], xz(&raw[512..])].concat();
        let (_t, d) = dest();
        extract(&data[..], &d).unwrap();
        assert_eq!(std::fs::read(d.join("a.h")).unwrap(), b"x");
    }

    #[test]
    fn a_later_blocks_dictionary_is_checked_too_and_an_invalid_one_is_damage() {
        let small = txz(&[("a.h", EntryType::Regular, b"x", None)]);
        let later = [small[..small.len()].to_vec(), xz_preset(&[0u8; 512], 9)].concat();
        let (t, d) = dest();
        let limits = Limits { dict_bytes: 8 << 20, ..Limits::DEFAULT };
        assert!(matches!(extract_limited(&later[..], &d, false, limits), Err(ArchiveError::TooLarge(m)) if m.contains("64 MiB")));
        let mut invalid = small.clone();
        invalid[16] = 41;
        fix_block_header_crc(&mut invalid);
        assert!(matches!(extract(&invalid[..], &d), Err(ArchiveError::Damaged(m)) if m.contains("dictionary property 41")));
        only(t.path(), &[]);
    }

    #[test]
    fn a_directory_replaced_by_a_link_is_never_written_through() {
        // `q` leads out only through `p`: lexically it stays inside.
        let outside = tempfile::tempdir().unwrap();
        let data = txz(&[
            ("q/", EntryType::Directory, b"", None),
            ("p", EntryType::Symlink, b"", Some(".")),
            ("q", EntryType::Symlink, b"", Some("p/..")),
            ("q/victim", EntryType::Regular, b"pwned", None),
        ]);
        let (t, d) = (outside.path().to_owned(), outside.path().join("x/out"));
        std::fs::create_dir_all(t.join("x")).unwrap();
        for over in [false, true] {
            if over {
                extract(&txz(&[("q/", EntryType::Directory, b"", None)])[..], &d).unwrap();
            }
            let err = extract_limited(&data[..], &d, over, Limits::DEFAULT).unwrap_err();
            let ArchiveError::Unsafe { first, .. } = &err else { panic!("{err}") };
            assert!(first.iter().any(|e| e.starts_with("q/victim: q is not a directory")), "{err}");
            assert!(first.iter().any(|e| e.starts_with("q: symlink to p/.. leads outside")), "{err}");
            assert!(!t.join("victim").exists() && !t.join("x/victim").exists(), "written outside");
            only(&t.join("x"), &[]);
        }
    }

    #[test]
    fn a_chain_of_links_that_ends_outside_is_refused_even_when_nothing_is_written_through_it() {
        let data = txz(&[
            ("a/", EntryType::Directory, b"", None),
            ("a/up", EntryType::Symlink, b"", Some("..")),
            ("out", EntryType::Symlink, b"", Some("a/up/a/up/..")),
        ]);
        let (t, d) = dest();
        let err = extract(&data[..], &d).unwrap_err();
        assert!(matches!(&err, ArchiveError::Unsafe { count: 1, first } if first[0].starts_with("out: ")), "{err}");
        only(t.path(), &[]);
        let looped = txz(&[("l1", EntryType::Symlink, b"", Some("l2")), ("l2", EntryType::Symlink, b"", Some("l1/x"))]);
        assert!(matches!(extract(&looped[..], &d), Err(ArchiveError::Unsafe { first, .. }) if first[0].contains("loops")));
    }

    #[test]
    fn setuid_setgid_sticky_and_group_or_world_write_are_dropped() {
        use std::os::unix::fs::PermissionsExt;
        let mut raw = Vec::new();
        {
            let mut b = tar::Builder::new(&mut raw);
            for (name, kind, mode) in [
                ("d/", EntryType::Directory, 0o1777),
                ("d/s", EntryType::Regular, 0o6777),
                ("z/", EntryType::Directory, 0o000),
                ("z/f", EntryType::Regular, 0o000),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(kind);
                h.set_size(0);
                h.set_mode(mode);
                h.set_path(name).unwrap();
                h.set_cksum();
                b.append(&h, &b""[..]).unwrap();
            }
            b.finish().unwrap();
        }
        let (_t, d) = dest();
        extract(&xz(&raw)[..], &d).unwrap();
        let mode = |p: &str| std::fs::symlink_metadata(d.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode("d"), mode("d/s"), mode("z"), mode("z/f")), (0o755, 0o755, 0o700, 0o600));
    }

    /// A raw tar of one PAX header of `len` bytes of path, then a file.
    fn pax_tar(len: usize) -> Vec<u8> {
        let record = |k: &str, v: &str| {
            let body = format!(" {k}={v}\n");
            let mut n = body.len() + 1;
            while format!("{n}").len() + body.len() != n {
                n += 1;
            }
            format!("{n}{body}")
        };
        let data = record("path", &"p/".repeat(len / 2));
        let mut raw = Vec::new();
        let mut b = tar::Builder::new(&mut raw);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_path("pax").unwrap();
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
        let mut f = tar::Header::new_ustar();
        f.set_path("short").unwrap();
        f.set_size(1);
        f.set_cksum();
        b.append(&f, b"x".as_slice()).unwrap();
        b.finish().unwrap();
        drop(b);
        raw
    }

    #[test]
    fn long_names_pax_headers_and_paths_are_bounded() {
        let (t, d) = dest();
        let err = extract(&xz(&pax_tar(1 << 20))[..], &d).unwrap_err();
        assert!(matches!(&err, ArchiveError::TooLarge(m) if m.contains("PAX header")), "{err}");
        assert!(err.to_string().len() < 300);
        let err = extract(&xz(&pax_tar(5000))[..], &d).unwrap_err();
        assert!(matches!(&err, ArchiveError::Unsafe { .. }) && err.to_string().len() < 600, "{err}");
        only(t.path(), &[]);
        // A PAX path within the limits names the entry.
        extract(&xz(&pax_tar(100))[..], &d).unwrap();
        assert!(d.join("p/".repeat(50).trim_end_matches('/')).is_file());
    }

    #[test]
    fn thousands_of_refused_entries_make_one_short_error() {
        let names: Vec<String> = (0..2000).map(|i| format!("../evil{i}")).collect();
        let entries: Vec<(&str, EntryType, &[u8], Option<&str>)> = names.iter().map(|n| (n.as_str(), EntryType::Regular, &b""[..], None)).collect();
        let (_t, d) = dest();
        let err = extract(&txz(&entries)[..], &d).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("2000 unsafe entries") && text.contains("and 1995 more") && text.len() < 600, "{text}");
    }

    #[test]
    fn entries_and_their_disk_are_bounded() {
        let names: Vec<String> = (0..300).map(|i| format!("d{i}/")).collect();
        let entries: Vec<(&str, EntryType, &[u8], Option<&str>)> = names.iter().map(|n| (n.as_str(), EntryType::Directory, &b""[..], None)).collect();
        let data = txz(&entries);
        let (t, d) = dest();
        let few = Limits { entries: 100, ..Limits::DEFAULT };
        assert!(matches!(extract_limited(&data[..], &d, false, few), Err(ArchiveError::TooLarge(m)) if m.contains("more than 100 entries")));
        // 300 directories take 300 blocks of 4 KiB: over 1 MiB.
        let small = Limits { unpacked_bytes: 1 << 20, ..Limits::DEFAULT };
        assert!(matches!(extract_limited(&data[..], &d, false, small), Err(ArchiveError::TooLarge(_))));
        only(t.path(), &[]);
        extract(&data[..], &d).unwrap();
    }

    #[test]
    fn a_directory_given_as_the_archive_is_named_as_such() {
        let (t, d) = dest();
        let err = extract_file(t.path(), &d).unwrap_err();
        assert!(matches!(&err, ArchiveError::NotAFile(p) if p == t.path()), "{err}");
    }
}
