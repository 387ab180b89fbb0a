//! Preflight: every host tool a cell needs, checked before anything is
//! built, and named with the Debian package that provides it; and enough
//! free space where the cell writes.

use std::path::Path;

use anyhow::{bail, Result};

use crate::kbuild::Config;
use crate::matrix::{Arch, Cell, Toolchain, LLVM_PACKAGES};

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
    let (cross, facts) = (cell.arch.cross_compile(), cell.arch.facts());
    if cell.toolchain == Toolchain::Llvm {
        let [clang, lld, llvm] = LLVM_PACKAGES;
        t.push(tool(cell.toolchain.cc(cell.arch), clang));
        t.push(tool(cell.toolchain.ld(cell.arch), lld));
        t.push(tool(format!("llvm-strip{}", crate::matrix::LLVM_SUFFIX), llvm));
    }
    if !cross.is_empty() {
        if cell.toolchain == Toolchain::Gcc {
            t.push(tool(format!("{cross}gcc"), facts.cross_packages[0]));
            t.push(tool(format!("{cross}ld"), facts.cross_packages[1]));
        }
        // The series rebuilds the archive's host programs for the target:
        // the target's C library (and, for clang too, GCC's crt files and
        // libgcc, which the cross compiler's package brings).
        t.push(tool(format!("/usr/lib/gcc-cross/{}", facts.triple), facts.cross_packages[0]));
        t.push(tool(format!("/usr/{}/include/stdio.h", facts.triple), facts.cross_packages[2]));
    }
    // The device phase: apt resolves a foreign userland, the port's static
    // binary is built with cargo.
    t.push(tool("dpkg-deb", "dpkg"));
    t.push(tool("apt-get", "apt"));
    t.push(tool(facts.qemu, facts.qemu_package));
    t.push(tool(facts.busybox, facts.busybox_package));
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

/// What the requested options need on the host besides [`required`]:
/// BTF is made by pahole.
pub fn for_options(want: &Config) -> Vec<Tool> {
    let mut t = Vec::new();
    if want.get("CONFIG_DEBUG_INFO_BTF").is_some_and(|v| v == "y") {
        t.push(tool("pahole", "dwarves"));
    }
    t
}

/// The host programs whose output a kernel build and its archive depend
/// on: the compiler and linker `toolchain` uses for `arch`, the host
/// compiler (it builds the archived host programs), make, the archive's
/// tools, and whatever [`for_options`] adds.
fn toolchain(arch: Arch, toolchain: Toolchain, want: &Config) -> Vec<String> {
    let mut t: Vec<String> = vec![toolchain.cc(arch), toolchain.ld(arch)];
    if toolchain == Toolchain::Llvm {
        t.push(format!("llvm-strip{}", crate::matrix::LLVM_SUFFIX));
    }
    let extra = for_options(want).into_iter().map(|t| t.name);
    for prog in ["gcc", "ld", "strip", "make", "perl", "cpio", "tar", "xz"].into_iter().map(str::to_owned).chain(extra) {
        if !t.contains(&prog) {
            t.push(prog);
        }
    }
    t
}

/// A key for the toolchain of a build of `arch` with `want`: its programs'
/// `--version` output. Part of every build's cache key, so that a new
/// compiler builds afresh.
pub fn toolchain_key(arch: Arch, tc: Toolchain, want: &Config) -> Result<String> {
    versions_key(&toolchain(arch, tc, want))
}

/// A key over each program's name and `--version` output.
fn versions_key(programs: &[String]) -> Result<String> {
    let mut parts = Vec::new();
    for prog in programs {
        let out = crate::process::output_limited(std::process::Command::new(prog).arg("--version"), crate::process::TOOL_LIMIT)
            .map_err(|e| anyhow::anyhow!("cannot run `{prog} --version`: {e:#}"))?;
        if !out.status.success() {
            bail!("`{prog} --version` failed ({})", out.status);
        }
        parts.push(prog.as_bytes().to_vec());
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
    fn a_new_version_of_any_toolchain_program_changes_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let prog = |name: &str, body: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p.to_string_lossy().into_owned()
        };
        let progs = [prog("cc", "echo 'cc (Debian 12.2.0-14) 12.2.0'"), prog("ld", "echo 'GNU ld 2.40'")];
        let before = versions_key(&progs).unwrap();
        prog("ld", "echo 'GNU ld 2.41'");
        assert_ne!(versions_key(&progs).unwrap(), before, "a new linker must build afresh");
        prog("ld", "echo 'GNU ld 2.40'");
        assert_eq!(versions_key(&progs).unwrap(), before);
        prog("ld", "exit 1");
        let e = format!("{:#}", versions_key(&progs).unwrap_err());
        assert!(e.contains(&progs[1]) && e.contains("--version` failed"), "{e}");
    }

    #[test]
    fn the_toolchain_has_the_cross_and_the_host_compiler() {
        let none = Config::new();
        let arm = toolchain(Arch::Arm64, Toolchain::Gcc, &none);
        assert!(arm.iter().any(|p| p.ends_with("-gcc")) && arm.iter().any(|p| p == "gcc"), "{arm:?}");
        let host = toolchain(Arch::X86_64, Toolchain::Gcc, &none);
        assert_eq!(host.iter().filter(|p| *p == "gcc").count(), 1, "{host:?}");
        assert!(!host.iter().any(|p| p == "pahole"), "{host:?}");
        let btf = Config::from([("CONFIG_DEBUG_INFO_BTF".to_owned(), "y".to_owned())]);
        let llvm = toolchain(Arch::Arm64, Toolchain::Llvm, &btf);
        for p in ["clang-19", "ld.lld-19", "llvm-strip-19", "gcc", "pahole"] {
            assert!(llvm.iter().any(|q| q == p), "{p} not in {llvm:?}");
        }
        assert!(!llvm.iter().any(|p| p.ends_with("-gcc")), "an LLVM build names no cross gcc: {llvm:?}");
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
