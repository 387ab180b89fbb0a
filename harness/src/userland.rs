//! The device's userland: what the guest of the `device` phase runs its
//! toolchain from, shared read-only over virtio-9p.
//!
//! - On the host's own architecture it is the host's root filesystem, as
//!   virtme-ng does: the toolchain that builds the kernel is the device's.
//! - On another architecture (arm64) it is a Debian userland for that
//!   architecture: [`PACKAGES`] and what they depend on, resolved by apt
//!   against an empty package status (the host's installed packages are
//!   neither read nor changed), downloaded into the cache, unpacked with
//!   `dpkg-deb -x` and keyed by every package's version.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cache::{key, Cache};
use crate::matrix::Arch;
use crate::process::output_limited;

/// What the device needs to unpack its archive, build a module and load
/// it, and the clients (DKMS, bcc).
pub const PACKAGES: &[&str] = &[
    "gcc",
    "make",
    "libc6-dev",
    "binutils",
    "xz-utils",
    "tar",
    "kmod",
    "dash",
    "coreutils",
    "sed",
    "grep",
    "findutils",
    "mawk",
    "diffutils",
    "util-linux",
    // The LLVM cells' device builds its modules with LLVM=-19, as their
    // kernel was built (matrix::LLVM_PACKAGES).
    "clang-19",
    "lld-19",
    "llvm-19",
    // The clients phase: Debian's dkms, a bash script; bcc.
    "dkms",
    "bash",
    "python3-bpfcc",
];

/// The programs the device phase needs in the userland, whichever it is.
pub const NEEDED: &[&str] = &["/bin/sh", "/usr/bin/make", "/usr/bin/gcc", "/usr/bin/xz", "/bin/tar", "/sbin/insmod", "/sbin/modprobe", "/bin/dmesg"];

/// The longest apt may take to resolve or download the packages.
const APT_LIMIT: Duration = Duration::from_secs(900);

/// The root of `arch`'s userland, prepared in `cache` if it is not the
/// host's; `progress` hears about a download.
pub fn prepare(cache: &Cache, arch: Arch, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let root = if arch.is_host() { PathBuf::from("/") } else { debian(cache, arch, progress)? };
    check(&root, arch)?;
    Ok(root)
}

/// An ERROR naming every program of [`NEEDED`] that `root` lacks.
pub fn check(root: &Path, arch: Arch) -> Result<()> {
    let missing: Vec<&str> = NEEDED.iter().copied().filter(|p| std::fs::symlink_metadata(inside(root, p)).is_err()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let fix = if arch.is_host() {
        "install them on this host (scripts/setup-host.sh installs make, gcc, xz-utils, tar and kmod)"
    } else {
        "remove the userland from the cache to unpack it again"
    };
    bail!("the {} device userland at {} has no {}: {fix}", arch.kernel_arch(), root.display(), missing.join(", "))
}

/// `path` (absolute) under `root`, without following a link of `root`'s.
fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The packages apt would install on an empty `arch` system, as the `.deb`
/// URIs and file names of `apt-get --print-uris`.
fn resolve(arch: Arch, work: &Path) -> Result<Vec<(String, String)>> {
    // An empty archive directory: apt leaves out what it has downloaded.
    let out = output_limited(apt(arch, work, "resolve").arg("--print-uris").args(PACKAGES), APT_LIMIT)?;
    if !out.status.success() {
        bail!(
            "apt cannot resolve the {} userland's packages ({}): {}\n(run apt-get update: scripts/setup-host.sh adds the {} architecture)",
            arch.kernel_arch(),
            PACKAGES.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            arch.facts().debian_arch
        );
    }
    Ok(parse_uris(&String::from_utf8_lossy(&out.stdout)))
}

/// `'URI' FILE SIZE HASH` lines of `apt-get --print-uris`.
pub fn parse_uris(text: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let uri = w.next()?.strip_prefix('\'')?.strip_suffix('\'')?;
            let file = w.next()?;
            file.ends_with(".deb").then(|| (uri.to_owned(), file.to_owned()))
        })
        .collect();
    v.sort();
    v
}

/// apt-get for `arch` with an empty status and its own archive directory
/// `work/archives`, so that nothing of the host's packages counts or changes.
fn apt(arch: Arch, work: &Path, archives: &str) -> Command {
    let deb_arch = arch.facts().debian_arch;
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "-qq", "--no-install-recommends"])
        .arg(format!("-oDir::State::status={}", work.join("status").display()))
        .arg(format!("-oDir::Cache::Archives={}", work.join(archives).display()))
        .arg(format!("-oAPT::Architecture={deb_arch}"))
        .arg(format!("-oAPT::Architectures::={deb_arch}"))
        .arg("-oDebug::NoLocking=1")
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// The Debian userland for `arch` in the cache, made if missing.
fn debian(cache: &Cache, arch: Arch, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let work = cache.root().join("userland-apt").join(arch.kernel_arch());
    for dir in ["debs/partial", "resolve/partial"] {
        std::fs::create_dir_all(work.join(dir)).with_context(|| format!("cannot create {}", work.display()))?;
    }
    std::fs::write(work.join("status"), b"")?;
    let debs = resolve(arch, &work)?;
    let files: Vec<&str> = debs.iter().map(|(_, f)| f.as_str()).collect();
    let userland_key = key(&[arch.kernel_arch().as_bytes(), files.join("\n").as_bytes()]);
    let _lock = cache.lock(&format!("userland-{userland_key}"))?;
    cache.get_or_make("userland", &userland_key, |root| {
        progress(&format!("userland: downloading {} {} packages", debs.len(), arch.facts().debian_arch));
        let out = output_limited(apt(arch, &work, "debs").arg("--download-only").args(PACKAGES), APT_LIMIT)?;
        if !out.status.success() {
            bail!("apt cannot download the {} userland: {}", arch.kernel_arch(), String::from_utf8_lossy(&out.stderr).trim());
        }
        progress(&format!("userland: unpacking {} packages", debs.len()));
        for file in &files {
            let deb = work.join("debs").join(file);
            let out = output_limited(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root), APT_LIMIT)?;
            if !out.status.success() {
                bail!("dpkg-deb -x {} failed: {}", deb.display(), String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        alternatives(root)?;
        std::fs::write(root.join("khtest-packages"), files.join("\n") + "\n")?;
        Ok(())
    })
}

/// The links that maintainer scripts (update-alternatives), which are not
/// run, would have made.
fn alternatives(root: &Path) -> Result<()> {
    for (link, target) in [("usr/bin/awk", "mawk"), ("usr/bin/cc", "gcc")] {
        let at = root.join(link);
        if std::fs::symlink_metadata(&at).is_err() {
            std::os::unix::fs::symlink(target, &at).with_context(|| format!("cannot link {}", at.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_gives_each_deb_once_sorted() {
        let text = "'http://deb.debian.org/debian/pool/main/m/make-dfsg/make_4.3-4.1_arm64.deb' make_4.3-4.1_arm64.deb 480000 SHA256:ab\n\
                    'http://deb.debian.org/debian/pool/main/d/dash/dash_0.5.12-2_arm64.deb' dash_0.5.12-2_arm64.deb 90000 SHA256:cd\n\
                    Reading package lists...\n";
        let got = parse_uris(text);
        assert_eq!(got.iter().map(|(_, f)| f.as_str()).collect::<Vec<_>>(), ["dash_0.5.12-2_arm64.deb", "make_4.3-4.1_arm64.deb"]);
        assert!(got[0].0.starts_with("http://deb.debian.org/"));
    }

    #[test]
    fn a_userland_without_a_compiler_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        for p in NEEDED.iter().filter(|p| !p.ends_with("gcc")) {
            let at = inside(d.path(), p);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(at, b"").unwrap();
        }
        let e = check(d.path(), Arch::Arm64).unwrap_err().to_string();
        assert!(e.contains("has no /usr/bin/gcc") && !e.contains("make"), "{e}");
    }
}
