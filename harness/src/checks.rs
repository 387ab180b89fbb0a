//! Stage 6, the checks: what the pulled archive and the guest's kernel log
//! must show. Each check returns a [`Verdict`]; none needs a kernel, so each
//! is unit-tested on inputs made here.

use std::path::{Path, PathBuf};

use kheaders_selftest::{archive, contents, modbuild};

use crate::matrix::Arch;
use crate::report::Verdict;

/// The pulled archive must be the build's archive, byte for byte.
pub fn same_bytes(pulled: &Path, built: &Path) -> Verdict {
    match (std::fs::read(pulled), std::fs::read(built)) {
        (Ok(a), Ok(b)) if a == b => Verdict::Pass,
        (Ok(a), Ok(b)) => Verdict::Fail(format!(
            "{} ({} bytes) differs from the build's {} ({} bytes)",
            pulled.display(),
            a.len(),
            built.display(),
            b.len()
        )),
        (Err(e), _) | (_, Err(e)) => Verdict::Error(format!("cannot compare the archives: {e}")),
    }
}

/// Unpack `archive` into `dest` (replacing what was there).
pub fn extract(archive_path: &Path, dest: &Path) -> Result<archive::Extracted, Verdict> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| Verdict::Error(format!("cannot remove {}: {e}", dest.display())))?;
    }
    archive::extract_file(archive_path, dest).map_err(|e| match e {
        archive::ArchiveError::Io { .. } => Verdict::Error(e.to_string()),
        _ => Verdict::Fail(format!("{}: {e}", archive_path.display())),
    })
}

/// No `Module.symvers`, and (with module-build artifacts) what
/// `make M=` cannot do without.
pub fn contents(root: &Path, modbuild: bool) -> Verdict {
    if let Err(e) = contents::no_module_symvers(root) {
        return Verdict::Fail(e);
    }
    if modbuild {
        let missing = contents::missing_modbuild_files(root);
        if !missing.is_empty() {
            return Verdict::Fail(format!("module-build files missing from the archive: {}", missing.join(", ")));
        }
    }
    Verdict::Pass
}

/// Build `testmod` against the unpacked archive with the documented recipe;
/// `ARCH`/`CROSS_COMPILE` only when cross-building. Warnings are expected
/// (there is no `Module.symvers`); an error or a missing `.ko` is a FAIL.
pub fn build_testmod(headers: &Path, testmod: &Path, arch: Arch, work: &Path, log: &Path) -> Result<PathBuf, Verdict> {
    let mut vars = Vec::new();
    if !arch.is_host() {
        vars.push(format!("ARCH={}", arch.kernel_arch()));
        vars.push(format!("CROSS_COMPILE={}", arch.cross_compile()));
    }
    let b = modbuild::build_module(headers, testmod, work, &vars, log)
        .map_err(|e| Verdict::Error(format!("cannot run the module build: {e:#}")))?;
    match (b.ok, b.ko) {
        (true, Some(ko)) if b.errors.is_empty() => Ok(ko),
        _ => {
            let mut why = format!("`{}` failed (log: {})", b.command, log.display());
            let lines = if b.errors.is_empty() { tail_lines(log, 10) } else { b.errors };
            for l in lines.iter().take(10) {
                why.push_str("\n    ");
                why.push_str(l);
            }
            Err(Verdict::Fail(why))
        }
    }
}

fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<String> = text.lines().map(str::to_owned).collect();
    v[v.len().saturating_sub(n)..].to_vec()
}

/// Comments are stripped from archived headers, but SPDX lines must stay:
/// every archived `.h` whose source (in `trees`, first match wins) has an
/// `SPDX-License-Identifier` line must have the same line. Vacuous (no
/// header with an SPDX line found) is a FAIL too: the check must see work.
pub fn spdx_kept(root: &Path, trees: &[&Path]) -> Verdict {
    let mut checked = 0usize;
    let mut lost = Vec::new();
    let files = walkdir::WalkDir::new(root).into_iter().flatten().filter(|e| e.file_type().is_file());
    for e in files {
        let e = e.into_path();
        let Ok(rel) = e.strip_prefix(root) else { continue };
        if rel.extension().is_none_or(|x| x != "h") {
            continue;
        }
        let Some(src) = trees.iter().map(|t| t.join(rel)).find(|p| p.is_file()) else { continue };
        let Some(want) = spdx_line(&std::fs::read_to_string(&src).unwrap_or_default()) else { continue };
        checked += 1;
        let have = std::fs::read_to_string(&e).unwrap_or_default();
        if spdx_line(&have).as_deref() != Some(want.as_str()) {
            lost.push(rel.display().to_string());
        }
    }
    match (checked, lost.len()) {
        (0, _) => Verdict::Fail("no archived header has a source with an SPDX line: nothing to compare".into()),
        (_, 0) => Verdict::Pass,
        (n, l) => Verdict::Fail(format!(
            "{l} of {n} archived headers lost their SPDX line, e.g. {}",
            lost.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The first line holding an SPDX tag, trimmed.
fn spdx_line(text: &str) -> Option<String> {
    text.lines().find(|l| l.contains("SPDX-License-Identifier:")).map(|l| l.trim().to_owned())
}

/// The test module's messages, as `selftests/kheaders/testmod/test.c` prints them.
pub const HELLO: &str = "Hello, world";
pub const GOODBYE: &str = "Goodbye, world";

/// `dmesg` output after a step must contain `line`.
pub fn kernel_log_has(step: &str, dmesg: &str, line: &str) -> Verdict {
    if dmesg.lines().any(|l| l.contains(line)) {
        Verdict::Pass
    } else {
        let last: Vec<&str> = dmesg.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        Verdict::Fail(format!("after {step} the kernel log has no {line:?}; it ends with:\n    {}", last.join("\n    ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_log_check() {
        assert_eq!(kernel_log_has("insmod", "[ 1.0] test: loading\n[ 1.1] Hello, world\n", HELLO), Verdict::Pass);
        let v = kernel_log_has("rmmod", "[ 1.1] Hello, world\n", GOODBYE);
        assert!(matches!(&v, Verdict::Fail(r) if r.contains("after rmmod") && r.contains("Hello, world")), "{v:?}");
    }

    #[test]
    fn spdx_lines_must_survive() {
        let d = tempfile::tempdir().unwrap();
        let (src, arc) = (d.path().join("src"), d.path().join("arc"));
        for dir in [&src, &arc] {
            std::fs::create_dir_all(dir.join("include/linux")).unwrap();
        }
        let spdx = "/* SPDX-License-Identifier: GPL-2.0 */";
        std::fs::write(src.join("include/linux/a.h"), format!("{spdx}\n/* comment */\nint a;\n")).unwrap();
        std::fs::write(src.join("include/linux/b.h"), "int b;\n").unwrap();
        std::fs::write(arc.join("include/linux/a.h"), format!("{spdx}\n\nint a;\n")).unwrap();
        std::fs::write(arc.join("include/linux/b.h"), "int b;\n").unwrap();
        assert_eq!(spdx_kept(&arc, &[&src]), Verdict::Pass);
        std::fs::write(arc.join("include/linux/a.h"), "\n\nint a;\n").unwrap();
        assert!(matches!(spdx_kept(&arc, &[&src]), Verdict::Fail(r) if r.contains("1 of 1") && r.contains("include/linux/a.h")));
        std::fs::remove_file(src.join("include/linux/a.h")).unwrap();
        assert!(matches!(spdx_kept(&arc, &[&src]), Verdict::Fail(r) if r.contains("nothing to compare")));
    }

    #[test]
    fn archive_comparison() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        std::fs::write(&a, b"same").unwrap();
        std::fs::write(&b, b"same").unwrap();
        std::fs::write(&c, b"other").unwrap();
        assert_eq!(same_bytes(&a, &b), Verdict::Pass);
        assert!(matches!(same_bytes(&a, &c), Verdict::Fail(_)));
        assert!(matches!(same_bytes(&a, &d.path().join("none")), Verdict::Error(_)));
    }

    #[test]
    fn contents_and_corrupt_archives() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        assert_eq!(contents(&root, false), Verdict::Pass);
        assert!(matches!(contents(&root, true), Verdict::Fail(r) if r.contains("scripts/mod/modpost")));
        std::fs::write(root.join("Module.symvers"), "").unwrap();
        assert!(matches!(contents(&root, false), Verdict::Fail(r) if r.contains("Module.symvers")));

        let bad = d.path().join("bad.tar.xz");
        std::fs::write(&bad, b"not xz at all").unwrap();
        let v = extract(&bad, &d.path().join("out")).unwrap_err();
        assert!(matches!(&v, Verdict::Fail(r) if r.contains("corrupt")), "{v:?}");
        assert!(!d.path().join("out").exists());
    }
}
