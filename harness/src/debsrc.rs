//! Packages from Debian suites the host's sources lack: the kernel
//! source `.tar.xz` that a `linux-source-<v>` package carries, and the
//! device's DKMS source packages.
//!
//! A kernel in the host's own suites (6.12 on Debian 12) is installed by
//! `scripts/setup-host.sh`. One that only a newer suite has (7.3, in
//! trixie-backports) is fetched with a private sources list, lists
//! directory and package status under the cache: the host's apt sources
//! and packages are neither read nor changed. It is unpacked into the cache
//! under its package's file name, so a new version is a new entry.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cache::Cache;
use crate::matrix::Kernel;
use crate::process::output_limited;

/// The longest apt may take to update its lists or fetch a package.
const APT_LIMIT: Duration = Duration::from_secs(900);

/// The archive the private sources list names.
const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The source `.tar.xz` of `kernel`, fetched into `cache` if it must be.
pub fn tarball(cache: &Cache, kernel: Kernel, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let facts = kernel.facts();
    let Some(suite) = facts.suite else {
        let path = PathBuf::from(facts.tarball);
        if !path.is_file() {
            bail!(
                "the {} kernel source {} is missing: apt-get install {} (scripts/setup-host.sh does), or pass --tree",
                facts.version,
                path.display(),
                facts.package
            );
        }
        return Ok(path);
    };
    let dir = unpacked(cache, suite, facts.package, progress)?;
    let path = dir.join(facts.tarball.trim_start_matches('/'));
    if !path.is_file() {
        bail!("{} from {suite} has no {}: is it still the package of the kernel source?", facts.package, facts.tarball);
    }
    Ok(path)
}

/// `package`'s candidate in `suite`, unpacked (`dpkg-deb -x`, no
/// maintainer script) into a directory of `cache` named by its file
/// name, so a new version is a new entry; fetched if it is not there.
pub fn unpacked(cache: &Cache, suite: &str, package: &str, progress: &dyn Fn(&str)) -> Result<PathBuf> {
    let work = cache.root().join("debsrc-apt").join(suite);
    let _lock = cache.lock(&format!("debsrc-{suite}"))?;
    if !has_lists(&work) {
        progress(&format!("{package}: apt-get update of {suite} (a private sources list)"));
        update(&work, suite)?;
    }
    let file = match deb_file(&work, suite, package) {
        Ok(f) => f,
        Err(_) => {
            // The lists may be older than the archive: read them again once.
            update(&work, suite)?;
            deb_file(&work, suite, package)?
        }
    };
    let name = file.trim_end_matches(".deb").replace(['~', '+', ':'], "_");
    cache.get_or_make("debsrc", &name, |dir| {
        progress(&format!("{package}: downloading {file}"));
        download(&work, package, dir).or_else(|_| {
            update(&work, suite)?;
            download(&work, package, dir)
        })?;
        let deb = dir.join(&file);
        let out = output_limited(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir), APT_LIMIT)?;
        if !out.status.success() {
            bail!("dpkg-deb -x {} failed: {}", deb.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        std::fs::remove_file(&deb).with_context(|| format!("cannot remove {}", deb.display()))
    })
}

fn has_lists(work: &Path) -> bool {
    std::fs::read_dir(work.join("lists")).map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().contains("_Packages"))).unwrap_or(false)
}

/// apt with only `suite`'s sources, its own lists and an empty status.
fn apt(program: &str, work: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg(format!("-oDir::Etc::SourceList={}", work.join("sources.list").display()))
        .arg("-oDir::Etc::SourceParts=/dev/null")
        .arg(format!("-oDir::State::Lists={}", work.join("lists").display()))
        .arg(format!("-oDir::State::status={}", work.join("status").display()))
        .arg(format!("-oDir::Cache={}", work.join("cache").display()))
        .arg("-oDebug::NoLocking=1")
        .arg("-qq")
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn update(work: &Path, suite: &str) -> Result<()> {
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(work.join(d)).with_context(|| format!("cannot create {}", work.join(d).display()))?;
    }
    std::fs::write(work.join("sources.list"), format!("deb [signed-by={KEYRING}] {MIRROR} {suite} main\n"))?;
    std::fs::write(work.join("status"), b"")?;
    let out = output_limited(apt("apt-get", work).arg("update"), APT_LIMIT)?;
    if !out.status.success() {
        bail!(
            "apt-get update of {suite} ({MIRROR}) failed: {}\n(the key is in {KEYRING}, from debian-archive-keyring)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The file name of the package's candidate `.deb`, which names its version.
fn deb_file(work: &Path, suite: &str, package: &str) -> Result<String> {
    let out = output_limited(apt("apt-get", work).args(["download", "--print-uris", package]), APT_LIMIT)?;
    let text = String::from_utf8_lossy(&out.stdout);
    match crate::userland::parse_uris(&text).into_iter().next() {
        Some((_, file)) if out.status.success() => Ok(file),
        _ => bail!("apt finds no {package} in {suite}: {}", String::from_utf8_lossy(&out.stderr).trim()),
    }
}

fn download(work: &Path, package: &str, dir: &Path) -> Result<()> {
    let out = output_limited(apt("apt-get", work).args(["download", package]).current_dir(dir), APT_LIMIT)?;
    if !out.status.success() {
        bail!("apt-get download {package} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
