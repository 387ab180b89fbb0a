//! The tar side: each entry checked, bounded and written into a staging
//! directory through [`fsat`] (never through a link), then the links'
//! targets judged as resolved in the tree, then the staging directory
//! renamed into place.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::fsat::{self, Dir, Kind};
use super::{io_err, shown, ArchiveError, Extracted, Failure, Limits, Stream, NAMED};

/// A file's mode as unpacked: the owner may always read and write it; no
/// setuid, setgid, sticky, group or world write bit survives.
fn file_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o600
}

/// A directory's mode: the owner may always enter, list and change it, so
/// that unpacking and removing the tree never fail on a mode.
fn dir_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o700
}

/// One disk block: every entry takes one at least.
const BLOCK: u64 = 4096;

/// Why one entry went wrong.
enum Refusal {
    /// The entry is unsafe: named in [`ArchiveError::Unsafe`].
    Unsafe(String),
    /// Anything else stops the extraction.
    Stop(ArchiveError),
}

impl From<ArchiveError> for Refusal {
    fn from(e: ArchiveError) -> Refusal {
        Refusal::Stop(e)
    }
}

/// The entries named unsafe: the first few, and how many in all.
#[derive(Default)]
struct Unsafe {
    count: usize,
    first: Vec<String>,
}

impl Unsafe {
    fn add(&mut self, name: &str, why: &str) {
        self.count += 1;
        if self.first.len() < NAMED {
            self.first.push(format!("{}: {why}", shown(name)));
        }
    }
}

/// Unpack the tar `stream` (which decodes to `uncompressed` bytes, as the
/// index says) into `dest`, which must not exist yet unless `over` (then
/// it may hold an earlier extraction, whose files are reused). `damage`
/// words a decoder failure.
pub(super) fn unpack(
    mut stream: Stream,
    dest: &Path,
    over: bool,
    limits: &Limits,
    uncompressed: u64,
    damage: &dyn Fn(&str) -> ArchiveError,
) -> Result<Extracted, ArchiveError> {
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
    // partial tree behind (the TempDir removes itself, never following a
    // link, and every directory in it stays writable by its owner).
    let staging = tempfile::Builder::new().prefix(".kheaders-extract-").tempdir_in(parent).map_err(io_err(parent))?;
    // An earlier extraction becomes the staging tree.
    if earlier.is_some() {
        std::fs::rename(dest, staging.path()).map_err(io_err(dest))?;
    }
    let root = Dir::open(staging.path()).map_err(io_err(staging.path()))?;
    let mut u = Unpacker::new(root, staging.path(), limits);
    let result = u.entries(&mut stream);
    // A stream that failed says why, whatever the tar reader made of it.
    match (stream.failure(), result) {
        (Some(Failure::OverLimit), _) => return Err(too_large(limits)),
        (Some(Failure::Damaged(why)), _) => return Err(damage(why)),
        (None, r) => r?,
    }
    // Past tar's end: the rest of the file, so that every block's check and
    // every index is verified, and the length the index promised.
    if let Err(e) = std::io::copy(&mut stream, &mut std::io::sink()) {
        return Err(match stream.failure() {
            Some(Failure::OverLimit) => too_large(limits),
            Some(Failure::Damaged(why)) => damage(why),
            None => damage(&e.to_string()),
        });
    }
    if stream.total() != uncompressed {
        return Err(damage(&format!("it decodes to {} bytes, and its index says {uncompressed}", stream.total())));
    }
    u.finish(over)?;
    let out = u.out;
    let staging = staging.keep();
    std::fs::rename(&staging, dest).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staging);
        ArchiveError::Io { path: dest.to_owned(), source: e }
    })?;
    Ok(Extracted { root: dest.to_owned(), ..out })
}

fn too_large(limits: &Limits) -> ArchiveError {
    ArchiveError::TooLarge(format!("it unpacks to more than {} MiB (a kheaders archive unpacks to about 35 MB)", limits.unpacked_bytes >> 20))
}

/// The state of one extraction.
struct Unpacker<'a> {
    root: Dir,
    staging: &'a Path,
    limits: &'a Limits,
    /// Every path the archive named, and their directories.
    named: HashSet<PathBuf>,
    names_bytes: u64,
    /// The archive's symlinks, judged once all are there.
    links: Vec<(PathBuf, PathBuf)>,
    unsafe_entries: Unsafe,
    entries: u64,
    disk: u64,
    out: Extracted,
}

/// What the GNU long-name and PAX entries say of the next entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

impl<'a> Unpacker<'a> {
    fn new(root: Dir, staging: &'a Path, limits: &'a Limits) -> Unpacker<'a> {
        let out = Extracted { root: PathBuf::new(), files: 0, dirs: 0, symlinks: 0, bytes: 0 };
        Unpacker {
            root,
            staging,
            limits,
            named: HashSet::new(),
            names_bytes: 0,
            links: Vec::new(),
            unsafe_entries: Unsafe::default(),
            entries: 0,
            disk: 0,
            out,
        }
    }

    /// Read every entry, writing those that are safe until one is not;
    /// then only read on, to name every unsafe one.
    fn entries(&mut self, stream: &mut Stream) -> Result<(), ArchiveError> {
        let damaged = |e: std::io::Error| ArchiveError::Damaged(format!("in the tar stream: {e}"));
        let mut tar = tar::Archive::new(stream);
        let mut pending = Pending::default();
        for entry in tar.entries().map_err(damaged)?.raw(true) {
            let mut entry = entry.map_err(damaged)?;
            self.entries += 1;
            if self.entries > self.limits.entries {
                return Err(ArchiveError::TooLarge(format!("it has more than {} entries (a kheaders archive has about 6,000)", self.limits.entries)));
            }
            let kind = entry.header().entry_type();
            match kind {
                EntryType::GNULongName => pending.path = Some(self.meta(&mut entry)?),
                EntryType::GNULongLink => pending.link = Some(self.meta(&mut entry)?),
                EntryType::XHeader => {
                    let data = self.meta(&mut entry)?;
                    pax(&data, &mut pending).map_err(|e| ArchiveError::Damaged(format!("a PAX header: {e}")))?;
                }
                EntryType::XGlobalHeader => drop(self.meta(&mut entry)?),
                _ => {
                    let p = std::mem::take(&mut pending);
                    let name = p.path.unwrap_or_else(|| entry.header().path_bytes().into_owned());
                    let link = p.link.or_else(|| entry.header().link_name_bytes().map(|l| l.into_owned()));
                    let shown_name = String::from_utf8_lossy(&name).into_owned();
                    match self.entry(&mut entry, &name, link.as_deref(), kind) {
                        Ok(()) => {}
                        Err(Refusal::Unsafe(why)) => self.unsafe_entries.add(&shown_name, &why),
                        Err(Refusal::Stop(e)) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// A GNU long name or PAX header's data, within the limit.
    fn meta<R: Read>(&self, entry: &mut tar::Entry<R>) -> Result<Vec<u8>, ArchiveError> {
        let size = entry.header().entry_size().map_err(|e| ArchiveError::Damaged(format!("a header's size: {e}")))?;
        if size > self.limits.meta_bytes {
            return Err(ArchiveError::TooLarge(format!(
                "it has a long name or PAX header of {size} bytes, and at most {} is accepted",
                self.limits.meta_bytes
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut data).map_err(|e| ArchiveError::Damaged(format!("a long name or PAX header: {e}")))?;
        // A GNU long name ends with NUL.
        while data.last() == Some(&0) {
            data.pop();
        }
        Ok(data)
    }

    /// Check one entry and, while no entry was unsafe, write it.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, name: &[u8], link: Option<&[u8]>, kind: EntryType) -> Result<(), Refusal> {
        let name = std::str::from_utf8(name).map_err(|_| Refusal::Unsafe("its name is not UTF-8".into()))?;
        let link = link.map(|l| std::str::from_utf8(l).map_err(|_| Refusal::Unsafe("its link target is not UTF-8".into()))).transpose()?;
        if name.len() > self.limits.path_bytes || link.is_some_and(|l| l.len() > self.limits.path_bytes) {
            return Err(Refusal::Unsafe(format!("a path or link target over {} bytes", self.limits.path_bytes)));
        }
        check_entry(name, kind, link).map_err(Refusal::Unsafe)?;
        let rel: PathBuf = Path::new(name).components().filter(|c| matches!(c, Component::Normal(_))).collect();
        if rel.components().any(|c| c.as_os_str().len() > 255) {
            return Err(Refusal::Unsafe("a name over 255 bytes".into()));
        }
        let size = entry.header().entry_size().map_err(|e| ArchiveError::Damaged(format!("{}: its size: {e}", shown(name))))?;
        self.disk += size.div_ceil(BLOCK).max(1) * BLOCK;
        if self.disk > self.limits.unpacked_bytes {
            return Err(too_large(self.limits).into());
        }
        if self.unsafe_entries.count > 0 {
            // Keep reading to name every unsafe entry, but write no more.
            return Ok(());
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        if rel.as_os_str().is_empty() {
            // `./`: the target directory itself.
            return self.root.chmod(dir_mode(mode)).map_err(|e| self.io(&rel, e));
        }
        // The directories on the way first: what was in their way is judged
        // by what the archive named before this entry.
        let dir = self.parent(&rel)?;
        self.name(&rel)?;
        let file_name = rel.file_name().expect("a normal last component");
        match kind {
            EntryType::Directory => {
                self.out.dirs += 1;
                self.make_dir(&dir, file_name, mode).map_err(|e| self.io(&rel, e))
            }
            EntryType::Symlink => {
                self.out.symlinks += 1;
                let target = link.expect("checked: a symlink has a target");
                self.replace(&dir, file_name, &rel)?;
                dir.symlink(OsStr::new(target), file_name).map_err(|e| self.io(&rel, e))?;
                self.links.push((rel, PathBuf::from(target)));
                Ok(())
            }
            EntryType::Link => {
                self.out.files += 1;
                let source: PathBuf = Path::new(link.expect("checked")).components().filter(|c| matches!(c, Component::Normal(_))).collect();
                let (from, source_name) = self.source(&source)?;
                self.replace(&dir, file_name, &rel)?;
                dir.link(&from, source_name, file_name).map_err(|e| self.io(&rel, e))
            }
            _ => {
                self.out.files += 1;
                self.out.bytes += size;
                let mtime = entry.header().mtime().unwrap_or(0).max(1) as i64;
                self.write_file(entry, &dir, file_name, &rel, file_mode(mode), mtime)
            }
        }
    }

    /// Remember `rel` and its directories as the archive's.
    fn name(&mut self, rel: &Path) -> Result<(), Refusal> {
        for a in rel.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            if self.named.insert(a.to_owned()) {
                self.names_bytes += a.as_os_str().len() as u64;
            }
        }
        if self.names_bytes > self.limits.names_bytes {
            return Err(ArchiveError::TooLarge(format!("its names add up to more than {} MiB", self.limits.names_bytes >> 20)).into());
        }
        Ok(())
    }

    fn io(&self, rel: &Path, e: std::io::Error) -> Refusal {
        Refusal::Stop(ArchiveError::Io { path: self.staging.join(rel), source: e })
    }

    /// The directory that holds `rel`, made as needed, reached without
    /// following a link. Something else in the way is the earlier tree's
    /// (then removed) or this archive's (then the entry is unsafe).
    fn parent(&self, rel: &Path) -> Result<Dir, Refusal> {
        let mut dir = self.root.sub(OsStr::new(".")).map_err(|e| self.io(Path::new(""), e))?;
        let mut sofar = PathBuf::new();
        for c in rel.parent().into_iter().flat_map(Path::components) {
            let name = c.as_os_str();
            sofar.push(name);
            dir = match dir.sub(name) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    dir.mkdir(name, 0o755).map_err(|e| self.io(&sofar, e))?;
                    dir.sub(name).map_err(|e| self.io(&sofar, e))?
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    // The archive named it (as itself or as a directory of
                    // an entry) and it is no directory now: the archive made
                    // it so. Else it is the earlier tree's, in the way.
                    if self.named.contains(&sofar) {
                        return Err(Refusal::Unsafe(format!("{} is not a directory in this archive", sofar.display())));
                    }
                    dir.remove(name).map_err(|e| self.io(&sofar, e))?;
                    dir.mkdir(name, 0o755).map_err(|e| self.io(&sofar, e))?;
                    dir.sub(name).map_err(|e| self.io(&sofar, e))?
                }
                Err(e) => return Err(self.io(&sofar, e)),
            };
        }
        Ok(dir)
    }

    /// Where a hard link's `source` is: its directory and name. It must be
    /// a regular file this archive made, reached without following a link.
    fn source<'s>(&self, source: &'s Path) -> Result<(Dir, &'s OsStr), Refusal> {
        let refuse = || Refusal::Unsafe(format!("hard link to {}, which is not a file of this archive", source.display()));
        if !self.named.contains(source) {
            return Err(refuse());
        }
        let mut dir = self.root.sub(OsStr::new(".")).map_err(|e| self.io(Path::new(""), e))?;
        for c in source.parent().into_iter().flat_map(Path::components) {
            dir = dir.sub(c.as_os_str()).map_err(|_| refuse())?;
        }
        let name = source.file_name().ok_or_else(refuse)?;
        match dir.kind(name) {
            Ok(Some(Kind::File { .. })) => Ok((dir, name)),
            _ => Err(refuse()),
        }
    }

    /// Make room at `name` (in `dir`) for a new entry: whatever is there
    /// goes, a directory with all it holds, and nothing is followed.
    fn replace(&self, dir: &Dir, name: &OsStr, rel: &Path) -> Result<(), Refusal> {
        match dir.kind(name) {
            Ok(None) => Ok(()),
            Ok(Some(_)) => dir.remove(name).map_err(|e| self.io(rel, e)),
            Err(e) => Err(self.io(rel, e)),
        }
    }

    fn make_dir(&self, dir: &Dir, name: &OsStr, mode: u32) -> std::io::Result<()> {
        match dir.kind(name)? {
            Some(Kind::Dir) => {}
            Some(_) => {
                dir.remove(name)?;
                dir.mkdir(name, 0o700)?;
            }
            None => dir.mkdir(name, 0o700)?,
        }
        dir.sub(name)?.chmod(dir_mode(mode))
    }

    /// Write a regular file's data. A lone regular file already there is
    /// rewritten in place, only where its bytes differ, and keeps its
    /// inode; anything else there is removed first.
    fn write_file<R: Read>(&self, entry: &mut tar::Entry<R>, dir: &Dir, name: &OsStr, rel: &Path, mode: u32, mtime: i64) -> Result<(), Refusal> {
        let old = match dir.kind(name).map_err(|e| self.io(rel, e))? {
            Some(Kind::File { size, links: 1, .. }) => size,
            None => 0,
            Some(_) => {
                dir.remove(name).map_err(|e| self.io(rel, e))?;
                0
            }
        };
        let file = dir.file(name).map_err(|e| self.io(rel, e))?;
        let (mut buf, mut was) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
        let mut at = 0u64;
        loop {
            // A read error is the stream's: its failure says which.
            let n = entry.read(&mut buf).map_err(|e| ArchiveError::Damaged(format!("{}: {e}", rel.display())))?;
            if n == 0 {
                break;
            }
            let same = old.saturating_sub(at).min(n as u64) as usize;
            let unchanged = same > 0 && file.read_exact_at(&mut was[..same], at).is_ok() && was[..same] == buf[..same];
            let from = if unchanged { same } else { 0 };
            file.write_all_at(&buf[from..n], at + from as u64).map_err(|e| self.io(rel, e))?;
            at += n as u64;
        }
        if at != old {
            file.set_len(at).map_err(|e| self.io(rel, e))?;
        }
        fsat::set_mode(&file, mode).map_err(|e| self.io(rel, e))?;
        fsat::set_mtime(&file, mtime).map_err(|e| self.io(rel, e))
    }

    /// After the last entry: unsafe entries refuse the whole archive;
    /// links must resolve inside the tree; an empty archive is an error;
    /// over an earlier tree, what this archive does not have goes.
    fn finish(&mut self, over: bool) -> Result<(), ArchiveError> {
        for (rel, target) in std::mem::take(&mut self.links) {
            if let Err(why) = self.resolves_inside(&rel, &target) {
                self.unsafe_entries.add(&rel.to_string_lossy(), &why);
            }
        }
        if self.unsafe_entries.count > 0 {
            let u = std::mem::take(&mut self.unsafe_entries);
            return Err(ArchiveError::Unsafe { count: u.count, first: u.first });
        }
        if self.out.files + self.out.dirs + self.out.symlinks == 0 {
            return Err(ArchiveError::Empty);
        }
        if over {
            self.remove_the_rest(&self.root.sub(OsStr::new(".")).map_err(io_err(self.staging))?, Path::new(""))?;
        }
        Ok(())
    }

    /// The link at `rel` to `target`, followed through the tree as the
    /// kernel would (links in it included, 40 at most): it must never
    /// climb above the tree's root. A target that does not exist is fine.
    fn resolves_inside(&self, rel: &Path, target: &Path) -> Result<(), String> {
        let mut at: Vec<OsString> = rel.parent().into_iter().flat_map(Path::components).map(|c| c.as_os_str().to_owned()).collect();
        let mut todo: std::collections::VecDeque<OsString> = components(target)?;
        let mut hops = 0;
        while let Some(c) = todo.pop_front() {
            if c == ".." {
                if at.pop().is_none() {
                    return Err(format!("symlink to {} leads outside the target", target.display()));
                }
                continue;
            }
            let Ok(dir) = self.walk(&at) else { return Ok(()) };
            match dir.kind(&c) {
                Ok(Some(Kind::Symlink)) => {
                    hops += 1;
                    if hops > 40 {
                        return Err(format!("symlink to {} loops", target.display()));
                    }
                    let next = dir.readlink(&c).map_err(|e| e.to_string())?;
                    let mut more = components(Path::new(&next))?;
                    more.extend(todo);
                    todo = more;
                }
                Ok(Some(Kind::Dir)) => at.push(c),
                // A file, or nothing: the path ends here, inside.
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// The directory at `path` (real directories only, from the root).
    fn walk(&self, path: &[OsString]) -> std::io::Result<Dir> {
        let mut dir = self.root.sub(OsStr::new("."))?;
        for c in path {
            dir = dir.sub(c)?;
        }
        Ok(dir)
    }

    /// Remove, below `dir` (at `rel`), everything the archive did not name.
    fn remove_the_rest(&self, dir: &Dir, rel: &Path) -> Result<(), ArchiveError> {
        for (name, is_dir) in dir.list().map_err(io_err(&self.staging.join(rel)))? {
            let path = rel.join(&name);
            if !self.named.contains(&path) {
                dir.remove(&name).map_err(io_err(&self.staging.join(&path)))?;
            } else if is_dir {
                let sub = dir.sub(&name).map_err(io_err(&self.staging.join(&path)))?;
                self.remove_the_rest(&sub, &path)?;
            }
        }
        Ok(())
    }
}

/// A link target's components, relative ones only.
fn components(target: &Path) -> Result<std::collections::VecDeque<OsString>, String> {
    let mut v = std::collections::VecDeque::new();
    for c in target.components() {
        match c {
            Component::Normal(n) => v.push_back(n.to_owned()),
            Component::ParentDir => v.push_back(OsString::from("..")),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(format!("symlink to absolute path {}", target.display())),
        }
    }
    Ok(v)
}

/// The `path` and `linkpath` of a PAX header's records (`LEN KEY=VALUE\n`).
/// A `size` is refused: the entry's data would not be where its header says.
fn pax(data: &[u8], pending: &mut Pending) -> Result<(), String> {
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ').ok_or("a record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok().and_then(|l| l.parse().ok()).ok_or("a record's length is not a number")?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("a record's length does not fit it".into());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or("a record without '='")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => pending.path = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" | b"GNU.sparse.size" | b"GNU.sparse.map" => return Err(format!("'{}' is not supported", String::from_utf8_lossy(key))),
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

/// Why an entry may not be unpacked, if it may not: judged on its name and
/// link alone (a link that leaves the tree through other links is caught
/// once the tree is there).
pub fn check_entry(name: &str, kind: EntryType, link: Option<&str>) -> Result<(), String> {
    let path = Path::new(name);
    let depth = relative_depth(path).ok_or("absolute path or '..' component")?;
    if depth == 0 && !matches!(kind, EntryType::Directory) {
        return Err("entry names the target directory itself".into());
    }
    match kind {
        EntryType::Regular | EntryType::Directory | EntryType::Continuous => Ok(()),
        // GNU and pax metadata entries are read by the unpacker.
        EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader | EntryType::XGlobalHeader => Ok(()),
        EntryType::Symlink => {
            let target = link.filter(|l| !l.is_empty()).ok_or("symlink without a target")?;
            let target = Path::new(target);
            if target.is_absolute() {
                return Err(format!("symlink to absolute path {}", shown(&target.to_string_lossy())));
            }
            // The link resolves relative to its own directory.
            let within = path.parent().unwrap_or(Path::new("")).join(target);
            match relative_depth_lexical(&within) {
                Some(_) => Ok(()),
                None => Err(format!("symlink to {} points outside the target", shown(&target.to_string_lossy()))),
            }
        }
        EntryType::Link => {
            let target = link.ok_or("hard link without a target")?;
            match relative_depth(Path::new(target)) {
                Some(d) if d > 0 => Ok(()),
                _ => Err(format!("hard link to {} points outside the target", shown(target))),
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
