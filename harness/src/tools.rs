//! Preflight: every host tool a cell needs, checked before anything is
//! built, and named with the Debian package that provides it; and enough
//! free space where the cell writes.

use std::path::Path;

use anyhow::{bail, Result};

use crate::matrix::{Arch, Cell};

/// A tool and the Debian package that provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// A command looked up in `PATH`, or an absolute path to a file.
    pub name: String,
    pub package: &'static str,
}

fn tool(name: impl Into<String>, package: &'static str) -> Tool {
    Tool { name: name.into(), package }
}

/// What building, booting and checking `cell` needs on this host.
pub fn required(cell: &Cell) -> Vec<Tool> {
    let mut t = vec![
        tool("make", "make"),
        tool("gcc", "gcc"),
        tool("flex", "flex"),
        tool("bison", "bison"),
        tool("bc", "bc"),
        tool("perl", "perl"),
        tool("cpio", "cpio"),
        tool("xz", "xz-utils"),
        tool("tar", "tar"),
        tool("patch", "patch"),
        // Kernel builds compile through it: cells with the same tree share
        // every object their configurations do not change.
        tool("ccache", "ccache"),
        tool("/usr/include/libelf.h", "libelf-dev"),
        tool("/usr/include/openssl/ssl.h", "libssl-dev"),
        // The eBPF check compiles the way BCC and samples/bpf do.
        tool("clang", "clang"),
        tool("llc", "llvm"),
        tool("llvm-objdump", "llvm"),
    ];
    let cross = cell.arch.cross_compile();
    if !cross.is_empty() {
        t.push(tool(format!("{cross}gcc"), "gcc-aarch64-linux-gnu"));
        t.push(tool(format!("{cross}ld"), "binutils-aarch64-linux-gnu"));
    }
    match cell.arch {
        Arch::X86_64 => t.push(tool("qemu-system-x86_64", "qemu-system-x86")),
        Arch::Arm64 => t.push(tool("qemu-system-aarch64", "qemu-system-arm")),
    }
    let busybox = crate::image::busybox_for(cell.arch).to_string_lossy().into_owned();
    match cell.arch {
        Arch::X86_64 => t.push(tool(busybox, "busybox-static")),
        Arch::Arm64 => t.push(tool(busybox, "busybox-static:arm64, unpacked by scripts/setup-host.sh")),
    }
    t
}

pub fn is_present(t: &Tool) -> bool {
    if t.name.starts_with('/') {
        return Path::new(&t.name).exists();
    }
    in_path(&t.name)
}

fn in_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).any(|dir| {
        let p = dir.join(name);
        std::fs::metadata(&p).is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
    })
}

/// Fail, naming every missing tool and its package, if any is missing.
pub fn check(tools: &[Tool]) -> Result<()> {
    let missing: Vec<&Tool> = tools.iter().filter(|t| !is_present(t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut pkgs: Vec<&str> = missing.iter().map(|t| t.package).collect();
    pkgs.sort_unstable();
    pkgs.dedup();
    let names: Vec<String> = missing.iter().map(|t| format!("{} (Debian package {})", t.name, t.package)).collect();
    bail!(
        "missing host tools: {}. Install them with: apt-get install --no-install-recommends {} \
         (or run scripts/setup-host.sh)",
        names.join(", "),
        pkgs.join(" ")
    )
}

/// The host programs whose output a kernel build and its archive depend
/// on: the compiler and binutils for `arch`, the host compiler (it builds
/// the archived host programs), make and the archive's tools.
fn toolchain(arch: Arch) -> Vec<String> {
    let cross = arch.cross_compile();
    let mut t: Vec<String> = vec![format!("{cross}gcc"), format!("{cross}ld")];
    for prog in ["gcc", "ld", "strip", "make", "perl", "cpio", "tar", "xz"] {
        if !t.iter().any(|p| p == prog) {
            t.push(prog.to_owned());
        }
    }
    t
}

/// A key for the toolchain of `arch`: its programs' `--version` output. Part
/// of every build's cache key, so that a new compiler builds afresh.
pub fn toolchain_key(arch: Arch) -> Result<String> {
    let mut parts = Vec::new();
    for prog in toolchain(arch) {
        let out = crate::process::output_limited(std::process::Command::new(&prog).arg("--version"), crate::process::TOOL_LIMIT)
            .map_err(|e| anyhow::anyhow!("cannot run `{prog} --version`: {e:#}"))?;
        if !out.status.success() {
            bail!("`{prog} --version` failed ({})", out.status);
        }
        parts.push(prog.into_bytes());
        parts.push(out.stdout);
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Ok(crate::cache::key(&refs))
}

/// Free space one cell needs in its output directory: the archive twice,
/// its extraction (about 50 MB with the module-build files), the kselftest's
/// own extraction, the initramfs and logs.
pub const OUT_DIR_NEEDS: u64 = 256 << 20;
/// Free space one cell needs in the cache when it builds: an unpacked tree
/// is 1.7 GB, a small kernel's object tree a few hundred MB.
pub const CACHE_NEEDS: u64 = 2 << 30;

/// Bytes available to this user in the file system holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs is plain data, for which all zeros is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs fills the struct we own from a valid C string.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!("cannot read the free space of {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Fail, naming `path` and what it is for, unless `need` bytes are free there.
pub fn check_space(path: &Path, what: &str, need: u64) -> Result<()> {
    let free = free_bytes(path)?;
    if free < need {
        bail!(
            "not enough space for the {what}: {} has {} MiB free, a cell needs up to {} MiB there (disk full? free some space or point {what} elsewhere)",
            path.display(),
            free >> 20,
            need >> 20
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_are_named_with_their_package() {
        let e = check(&[tool("sh", "dash"), tool("khtest-no-such-tool", "no-such-package"), tool("/no/such/file.h", "libnope-dev")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("khtest-no-such-tool (Debian package no-such-package)"), "{e}");
        assert!(e.contains("/no/such/file.h (Debian package libnope-dev)"), "{e}");
        assert!(e.contains("apt-get install --no-install-recommends libnope-dev no-such-package"), "{e}");
        assert!(!e.contains("dash"), "{e}");
    }

    #[test]
    fn the_toolchain_key_is_stable_and_per_arch() {
        let x = toolchain_key(Arch::X86_64).unwrap();
        assert_eq!(x, toolchain_key(Arch::X86_64).unwrap());
        let arm = toolchain(Arch::Arm64);
        assert!(arm.iter().any(|p| p.ends_with("-gcc")) && arm.iter().any(|p| p == "gcc"), "{arm:?}");
        let host = toolchain(Arch::X86_64);
        assert_eq!(host.iter().filter(|p| *p == "gcc").count(), 1, "{host:?}");
    }

    #[test]
    fn too_little_space_is_named_with_the_path() {
        let d = tempfile::tempdir().unwrap();
        assert!(free_bytes(d.path()).unwrap() > 0);
        check_space(d.path(), "output directory", 1).unwrap();
        let e = check_space(d.path(), "output directory (--out)", u64::MAX).unwrap_err().to_string();
        assert!(e.contains(&d.path().display().to_string()) && e.contains("MiB free") && e.contains("--out"), "{e}");
    }
}
