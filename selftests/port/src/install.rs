//! `kheaders install`: make the running kernel's archive usable by tools
//! that expect a linux-headers package (DKMS, out-of-tree module builds):
//! unpack it, with the same hardened unpacker as the port, into a
//! directory of this kernel release that only its owner can change
//! (`/usr/src/kheaders-<release>`, not `/tmp`), and point
//! `/lib/modules/<release>/build` at it. `kheaders remove` undoes it.
//! On a `CONFIG_MODVERSIONS` kernel, the symbol versions it serves go in
//! the tree as `Module.symvers`, which the archive cannot carry, so that
//! modules built there carry the versions the kernel checks.
//!
//! It refuses, changing nothing, an archive with headers only, one for
//! another kernel release, one whose programs do not run on this machine,
//! and a place that somebody else controls. It takes a lock, so two copies
//! run one after the other; it unpacks beside the tree and swaps it in with
//! renames, so an interrupted run leaves the old state (and a staging
//! directory that the next run removes).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::archive::{self, ArchiveError};

/// Where this kernel release's headers go, under `root` (`/`, or a test's
/// directory).
#[derive(Debug, Clone)]
pub struct Places {
    pub root: PathBuf,
    pub release: String,
}

impl Places {
    /// The unpacked tree.
    pub fn tree(&self) -> PathBuf {
        self.root.join("usr/src").join(format!("kheaders-{}", self.release))
    }

    /// The link kbuild and DKMS look for.
    pub fn build_link(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release).join("build")
    }

    fn staging(&self) -> PathBuf {
        self.root.join("usr/src").join(format!(".kheaders-{}.new", self.release))
    }

    fn old(&self) -> PathBuf {
        self.root.join("usr/src").join(format!(".kheaders-{}.old", self.release))
    }

    fn lock(&self) -> PathBuf {
        self.root.join("usr/src").join(format!(".kheaders-{}.lock", self.release))
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Installed {
        files: usize,
        /// The kernel's symbol versions went in as `Module.symvers`.
        versions: bool,
    },
    /// The same archive was installed already: nothing changed.
    AlreadyInstalled,
    Removed,
    NothingToRemove,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    #[error("the archive has headers only (no Makefile): it cannot build modules; the kernel needs CONFIG_IKHEADERS_MODBUILD")]
    HeadersOnly,
    #[error("the archive is for kernel {archive}, and this kernel is {running}: nothing installed")]
    OtherKernel { archive: String, running: String },
    #[error("the archive's {program} is for ELF machine {found}, and this machine is {want}: nothing installed")]
    OtherMachine { program: String, found: u16, want: u16 },
    #[error("{path} is {what}, which kheaders did not make: remove it or choose another --root; nothing changed")]
    NotOurs { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_owned(), source }
}

/// The stamp in the tree: which archive it holds.
const STAMP: &str = ".kheaders-archive";

/// Install the archive at `archive` for `places`, whose programs must be
/// for ELF machine `machine`, with `symvers` (the symbol versions the
/// running kernel serves), if given, as its `Module.symvers`.
pub fn install(places: &Places, archive: &Path, symvers: Option<&Path>, machine: u16) -> Result<Outcome, InstallError> {
    // Before anything is made there (the lock), and again under the lock.
    check_ours(places)?;
    let _lock = lock(places)?;
    let bytes = std::fs::read(archive).map_err(io(archive))?;
    let versions = symvers.map(|p| std::fs::read(p).map_err(io(p))).transpose()?;
    let mut stamp = format!("{:016x} {}\n", fnv1a(&bytes), bytes.len());
    if let Some(v) = &versions {
        stamp += &format!("{:016x} {} Module.symvers\n", fnv1a(v), v.len());
    }
    check_ours(places)?;
    if std::fs::read_to_string(places.tree().join(STAMP)).is_ok_and(|s| s == stamp) && link_is_ours(places)? {
        return Ok(Outcome::AlreadyInstalled);
    }
    let staging = places.staging();
    let x = archive::extract(&bytes[..], &staging)?;
    if let Err(e) = judge(&staging, &places.release, machine) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Some(v) = &versions {
        std::fs::write(staging.join("Module.symvers"), v).map_err(io(&staging))?;
    }
    std::fs::write(staging.join(STAMP), &stamp).map_err(io(&staging))?;
    swap_in(places, &staging)?;
    point_build_link(places)?;
    Ok(Outcome::Installed { files: x.files, versions: versions.is_some() })
}

/// Remove what [`install`] made for `places`.
pub fn remove(places: &Places) -> Result<Outcome, InstallError> {
    check_ours(places)?;
    let _lock = lock(places)?;
    check_ours(places)?;
    let (link, tree) = (places.build_link(), places.tree());
    let mut removed = false;
    if link_is_ours(places)? {
        std::fs::remove_file(&link).map_err(io(&link))?;
        removed = true;
    }
    if tree.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&tree).map_err(io(&tree))?;
        removed = true;
    }
    Ok(if removed { Outcome::Removed } else { Outcome::NothingToRemove })
}

/// The archive unpacked at `tree` can build modules for `release` on
/// machine `machine`.
fn judge(tree: &Path, release: &str, machine: u16) -> Result<(), InstallError> {
    if !tree.join("Makefile").is_file() {
        return Err(InstallError::HeadersOnly);
    }
    let path = tree.join("include/config/kernel.release");
    let archive = std::fs::read_to_string(&path).map_err(io(&path))?.trim().to_owned();
    if archive != release {
        return Err(InstallError::OtherKernel { archive, running: release.to_owned() });
    }
    for program in ["scripts/basic/fixdep", "scripts/mod/modpost"] {
        let mut head = [0u8; 20];
        let read = File::open(tree.join(program)).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
        if let (Ok(()), Some(found)) = (read, crate::elf::machine(&head)) {
            if found != machine {
                return Err(InstallError::OtherMachine { program: program.into(), found, want: machine });
            }
        }
    }
    Ok(())
}

/// Nothing at the places is somebody else's: the tree, if there, is a
/// real directory owned by this user; the build link, if there, is ours.
fn check_ours(places: &Places) -> Result<(), InstallError> {
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    for dir in [places.root.join("usr/src"), places.tree(), places.build_link().parent().expect("a parent").to_owned()] {
        match dir.symlink_metadata() {
            Ok(m) if !m.is_dir() => return Err(InstallError::NotOurs { path: dir, what: "not a directory (a link or a file)".into() }),
            Ok(m) if m.uid() != me || m.mode() & 0o022 != 0 => {
                return Err(InstallError::NotOurs {
                    path: dir,
                    what: format!("a directory owned by uid {} with mode {:o}", m.uid(), m.mode() & 0o7777),
                })
            }
            _ => {}
        }
    }
    if places.build_link().symlink_metadata().is_ok() && !link_is_ours(places)? {
        let link = places.build_link();
        let what = match std::fs::read_link(&link) {
            Ok(t) => format!("a link to {}", t.display()),
            Err(_) => "not a link".into(),
        };
        return Err(InstallError::NotOurs { path: link, what });
    }
    Ok(())
}

/// Whether the build link exists and points at our tree.
fn link_is_ours(places: &Places) -> Result<bool, InstallError> {
    let link = places.build_link();
    match std::fs::read_link(&link) {
        Ok(t) => Ok(t == places.tree() || t == tree_as_linked(places)),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput) => Ok(false),
        Err(e) => Err(io(&link)(e)),
    }
}

/// The link's target as it is written: absolute on the device.
fn tree_as_linked(places: &Places) -> PathBuf {
    Path::new("/").join(places.tree().strip_prefix(&places.root).unwrap_or(&places.tree()))
}

/// Take the lock for this release; it goes when the file is closed. A
/// staging or old tree that an interrupted run left is removed under it.
fn lock(places: &Places) -> Result<File, InstallError> {
    let src = places.root.join("usr/src");
    make_dir(&src)?;
    let path = places.lock();
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).custom_flags_nofollow().open(&path).map_err(io(&path))?;
    // SAFETY: flock(2) on an open file.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
        return Err(io(&path)(std::io::Error::last_os_error()));
    }
    for leftover in [places.staging(), places.old()] {
        if leftover.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&leftover).map_err(io(&leftover))?;
        }
    }
    Ok(f)
}

/// `dir` and its parents, made owner-writable only.
fn make_dir(dir: &Path) -> Result<(), InstallError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(io(dir))
}

/// Put `staging` where the tree goes, the old tree (if any) out of the
/// way first, each step a rename.
fn swap_in(places: &Places, staging: &Path) -> Result<(), InstallError> {
    let (tree, old) = (places.tree(), places.old());
    let had = tree.symlink_metadata().is_ok();
    if had {
        std::fs::rename(&tree, &old).map_err(io(&tree))?;
    }
    std::fs::rename(staging, &tree).map_err(io(&tree))?;
    if had {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    // The unpacker's staging directory is owner-only: kbuild runs as users too.
    std::fs::set_permissions(&tree, std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(io(&tree))
}

/// Point the build link at the tree: a new link renamed over it, so that
/// it is never missing or half-made.
fn point_build_link(places: &Places) -> Result<(), InstallError> {
    let link = places.build_link();
    let dir = link.parent().expect("a parent");
    make_dir(dir)?;
    if link_is_ours(places)? {
        return Ok(());
    }
    let tmp = dir.join(".build.kheaders-new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(tree_as_linked(places), &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &link).map_err(io(&link))
}

/// FNV-1a: which archive a tree holds (not a security check: the archive
/// is verified whole each time it is unpacked).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NOFOLLOW)
    }
}

/// The release of the running kernel (`uname -r`).
pub fn running_release() -> std::io::Result<String> {
    // SAFETY: utsname is plain data; uname(2) fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: release is NUL-terminated.
    Ok(unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned())
}

/// The ELF machine of the programs this binary was built for.
pub const fn this_machine() -> u16 {
    if cfg!(target_arch = "aarch64") {
        183
    } else {
        62
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A module-build-looking archive for `release`, whose fixdep is for
    /// ELF machine `machine`.
    fn archive(dir: &Path, release: &str, machine: u16, makefile: bool) -> PathBuf {
        let mut fixdep = b"\x7fELF\x02\x01\x01".to_vec();
        fixdep.resize(20, 0);
        fixdep[18..20].copy_from_slice(&machine.to_le_bytes());
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            ("include/config/kernel.release", format!("{release}\n").into_bytes()),
            ("scripts/basic/fixdep", fixdep),
            ("include/linux/a.h", b"x".to_vec()),
        ];
        if makefile {
            files.push(("Makefile", b"all:\n".to_vec()));
        }
        let mut raw = Vec::new();
        {
            let mut b = tar::Builder::new(&mut raw);
            for (name, data) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o755);
                h.set_cksum();
                b.append_data(&mut h, name, &data[..]).unwrap();
            }
            b.finish().unwrap();
        }
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&raw).unwrap();
        let path = dir.join(format!("{release}-{machine}-{makefile}.tar.xz"));
        std::fs::write(&path, xz.finish().unwrap()).unwrap();
        path
    }

    fn places(root: &Path) -> Places {
        Places { root: root.join("root"), release: "6.12.118".into() }
    }

    #[test]
    fn installs_links_is_idempotent_and_removes() {
        let d = tempfile::tempdir().unwrap();
        let p = places(d.path());
        let a = archive(d.path(), "6.12.118", 62, true);
        assert!(matches!(install(&p, &a, None, 62).unwrap(), Outcome::Installed { files: 4, versions: false }));
        assert_eq!(std::fs::read_link(p.build_link()).unwrap(), Path::new("/usr/src/kheaders-6.12.118"));
        assert!(p.tree().join("Makefile").is_file());
        assert_eq!(install(&p, &a, None, 62).unwrap(), Outcome::AlreadyInstalled);
        assert_eq!(remove(&p).unwrap(), Outcome::Removed);
        assert!(p.build_link().symlink_metadata().is_err() && !p.tree().exists());
        assert_eq!(remove(&p).unwrap(), Outcome::NothingToRemove);
    }

    #[test]
    fn refuses_headers_only_another_kernel_and_another_machine_changing_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = places(d.path());
        let cases = [
            (archive(d.path(), "6.12.118", 62, false), "headers only"),
            (archive(d.path(), "6.12.999", 62, true), "for kernel 6.12.999, and this kernel is 6.12.118"),
            (archive(d.path(), "6.12.118", 183, true), "ELF machine 183, and this machine is 62"),
        ];
        for (a, why) in cases {
            let err = install(&p, &a, None, 62).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
            assert!(!p.tree().exists() && p.build_link().symlink_metadata().is_err(), "{why}: changed something");
            let left: Vec<_> = std::fs::read_dir(p.root.join("usr/src")).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left, [std::ffi::OsString::from(".kheaders-6.12.118.lock")], "{why}");
        }
    }

    #[test]
    fn refuses_a_place_somebody_else_controls() {
        let d = tempfile::tempdir().unwrap();
        let p = places(d.path());
        let a = archive(d.path(), "6.12.118", 62, true);
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        // The tree's place is a link to somewhere else.
        std::fs::create_dir_all(p.root.join("usr/src")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, p.tree()).unwrap();
        assert!(matches!(install(&p, &a, None, 62), Err(InstallError::NotOurs { .. })));
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        std::fs::remove_file(p.tree()).unwrap();
        // The build link points at somebody else's tree.
        std::fs::create_dir_all(p.build_link().parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, p.build_link()).unwrap();
        let err = install(&p, &a, None, 62).unwrap_err();
        assert!(err.to_string().contains("a link to") && !p.tree().exists(), "{err}");
        assert!(matches!(remove(&p), Err(InstallError::NotOurs { .. })), "remove leaves it alone too");
        assert_eq!(std::fs::read_link(p.build_link()).unwrap(), elsewhere);
    }

    #[test]
    fn a_staging_tree_an_interrupted_run_left_is_removed_and_a_new_archive_replaces_the_old() {
        let d = tempfile::tempdir().unwrap();
        let p = places(d.path());
        std::fs::create_dir_all(p.staging().join("half")).unwrap();
        let a = archive(d.path(), "6.12.118", 62, true);
        install(&p, &a, None, 62).unwrap();
        assert!(!p.staging().exists());
        std::fs::write(p.tree().join("stale"), "x").unwrap();
        let mut again = std::fs::read(&a).unwrap();
        let b = d.path().join("b.tar.xz");
        again.extend_from_slice(&[0; 4]);
        std::fs::write(&b, again).unwrap();
        assert!(matches!(install(&p, &b, None, 62).unwrap(), Outcome::Installed { .. }), "another archive's bytes");
        assert!(!p.tree().join("stale").exists() && !p.old().exists());
    }

    #[test]
    fn the_served_symbol_versions_go_in_as_module_symvers_and_new_ones_reinstall() {
        let d = tempfile::tempdir().unwrap();
        let p = places(d.path());
        let a = archive(d.path(), "6.12.118", 62, true);
        let served = d.path().join("served");
        std::fs::write(&served, "0x12345678\t_printk\tvmlinux\tEXPORT_SYMBOL\t\n").unwrap();
        assert!(matches!(install(&p, &a, Some(&served), 62).unwrap(), Outcome::Installed { versions: true, .. }));
        assert_eq!(std::fs::read(p.tree().join("Module.symvers")).unwrap(), std::fs::read(&served).unwrap());
        assert_eq!(install(&p, &a, Some(&served), 62).unwrap(), Outcome::AlreadyInstalled);
        // The same archive without them (another boot's, or none served):
        // the tree must not keep the old ones.
        assert!(matches!(install(&p, &a, None, 62).unwrap(), Outcome::Installed { versions: false, .. }));
        assert!(!p.tree().join("Module.symvers").exists());
        let missing = d.path().join("missing");
        assert!(install(&p, &a, Some(&missing), 62).unwrap_err().to_string().contains("missing"));
    }
}
