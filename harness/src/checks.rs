//! The checks: what the pulled archive and the guest's kernel log
//! must show. Each check returns a [`Verdict`]; none needs a kernel, so each
//! is unit-tested on inputs made here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kheaders_selftest::{archive, contents, modbuild};

use crate::buildlog;
use crate::matrix::{Arch, Toolchain};
use crate::report::Verdict;
use crate::tap;

/// The pulled archive must be the build's archive, byte for byte.
pub fn same_bytes(pulled: &Path, built: &Path) -> Verdict {
    match (std::fs::read(pulled), std::fs::read(built)) {
        (Ok(a), Ok(b)) if a == b => Verdict::Pass,
        (Ok(a), Ok(b)) => {
            Verdict::Fail(format!("{} ({} bytes) differs from the build's {} ({} bytes)", pulled.display(), a.len(), built.display(), b.len()))
        }
        (Err(e), _) | (_, Err(e)) => Verdict::Error(format!("cannot compare the archives: {e}")),
    }
}

/// `KHTEST-STAT <size> <path>` lines (from `stat -c`) as (path, size).
pub fn parse_stat(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("KHTEST-STAT ")?.splitn(2, ' ');
            let size = w.next()?.parse().ok()?;
            Some((w.next()?.trim().to_owned(), size))
        })
        .collect()
}

/// Exactly the files `want` are served, each `size` bytes long (the size a
/// reader sees before reading: procfs must set it).
pub fn served_sizes(got: &[(String, u64)], want: &[&str], size: u64) -> Verdict {
    let mut problems = Vec::new();
    for w in want {
        match got.iter().find(|(p, _)| p == w) {
            None => problems.push(format!("{w} is missing")),
            Some((_, n)) if *n != size => problems.push(format!("{w} is {n} bytes, the archive {size}")),
            Some(_) => {}
        }
    }
    for (p, _) in got.iter().filter(|(p, _)| !want.contains(&p.as_str())) {
        problems.push(format!("{p} exists and should not"));
    }
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(problems.join("; "))
    }
}

/// A file's bytes and modification time, to tell whether it was rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub bytes: Vec<u8>,
    pub mtime: std::time::SystemTime,
}

pub fn snapshot(path: &Path) -> std::io::Result<Snapshot> {
    Ok(Snapshot { bytes: std::fs::read(path)?, mtime: std::fs::metadata(path)?.modified()? })
}

/// A no-op rebuild must leave the archive alone: same bytes, same mtime,
/// and (when `quiet_generator`) no kbuild line about the archive at all,
/// i.e. the generator did not even run to compare.
pub fn noop_rebuild(before: &Snapshot, after: &Snapshot, rebuild_log: &str, quiet_generator: bool) -> Verdict {
    if before.bytes != after.bytes {
        return Verdict::Fail("a no-op rebuild changed the archive's bytes".into());
    }
    if before.mtime != after.mtime {
        return Verdict::Fail("a no-op rebuild rewrote the archive (its mtime changed)".into());
    }
    if quiet_generator {
        let lines: Vec<&str> = rebuild_log.lines().filter(|l| l.contains("kheaders_data") || l.contains("gen_kheaders")).collect();
        if !lines.is_empty() {
            return Verdict::Fail(format!("a no-op rebuild ran the archive generator: {}", lines.join(" | ")));
        }
    }
    Verdict::Pass
}

/// Unpack `archive` into `dest`, over what an earlier run unpacked there
/// (scratch.rs says why). The error names the archive; whether it is the
/// kernel's or the host's is [`crate::blame`]'s to say.
pub fn extract(archive_path: &Path, dest: &Path) -> anyhow::Result<archive::Extracted> {
    use anyhow::Context;
    archive::extract_file_over(archive_path, dest).with_context(|| archive_path.display().to_string())
}

/// The most memory a small device may need to decode the archive (K17):
/// mainline's xz settings, an 8 MiB dictionary, need about that.
pub const DECODE_LIMIT: u64 = 9 << 20;

/// The memory that decoding needs, from `xz --robot -lvv` output: the
/// second field of its `summary` line.
pub fn parse_xz_memory(robot: &str) -> Option<u64> {
    robot.lines().find_map(|l| l.strip_prefix("summary\t")?.split('\t').next()?.parse().ok())
}

/// The archive decodes in at most [`DECODE_LIMIT`] bytes, as
/// `xz --robot -lvv` reads it from the stream's block headers.
pub fn decode_memory(archive: &Path) -> Verdict {
    match xz_list(archive) {
        Ok(out) => decode_memory_verdict(&out),
        Err(e) => Verdict::Error(e),
    }
}

/// What `xz --robot -lvv` says of `archive`.
pub fn xz_list(archive: &Path) -> Result<String, String> {
    let mut list = std::process::Command::new("xz");
    list.args(["--robot", "-lvv"]).arg(archive);
    match crate::process::output_limited(&mut list, crate::process::TOOL_LIMIT) {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!("xz --robot -lvv {} failed: {}", archive.display(), String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("cannot run xz (Debian package xz-utils): {e:#}")),
    }
}

fn decode_memory_verdict(robot: &str) -> Verdict {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    match parse_xz_memory(robot) {
        None => Verdict::Error(format!("xz --robot -lvv has no summary line: {robot:?}")),
        Some(m) if m <= DECODE_LIMIT => Verdict::Pass,
        Some(m) => Verdict::Fail(format!(
            "decoding the archive needs {:.1} MiB ({m} bytes, xz --robot -lvv), more than the {:.0} MiB a small device can spare",
            mib(m),
            mib(DECODE_LIMIT)
        )),
    }
}

/// No `Module.symvers`, every device-tree binding an archived header
/// includes, and (with module-build artifacts) what `make M=` cannot do
/// without.
pub fn contents(root: &Path, modbuild: bool) -> Verdict {
    if let Err(e) = contents::no_module_symvers(root) {
        return Verdict::Fail(e);
    }
    match contents::dangling_dt_bindings(root) {
        (0, _) => return Verdict::Fail("no archived header includes a device-tree binding: nothing to check".into()),
        (n, missing) if !missing.is_empty() => {
            return Verdict::Fail(format!(
                "{} of {n} device-tree bindings that archived headers include are not in the archive, e.g. {}",
                missing.len(),
                missing.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ))
        }
        _ => {}
    }
    if modbuild {
        let missing = contents::missing_modbuild_files(root);
        if !missing.is_empty() {
            return Verdict::Fail(format!("module-build files missing from the archive: {}", missing.join(", ")));
        }
    }
    Verdict::Pass
}

/// Nothing of the build machine in the unpacked archive at `root`: no
/// kbuild `.cmd` file or object (`install-extmod-build` deletes them: their
/// `savedcmd` lines name where the trees were) and no file that names one of
/// `trees` (the source and object trees' absolute paths), so that the bytes
/// do not depend on where the kernel was built.
pub fn no_build_machine_traces(root: &Path, trees: &[&Path]) -> Verdict {
    use std::os::unix::ffi::OsStrExt;
    let (mut kbuild_files, mut naming) = (Vec::new(), Vec::new());
    let files = walkdir::WalkDir::new(root).into_iter().flatten().filter(|e| e.file_type().is_file());
    for e in files {
        let rel = e.path().strip_prefix(root).unwrap_or(e.path()).display().to_string();
        let name = e.file_name().to_string_lossy();
        if (name.starts_with('.') && name.ends_with(".cmd")) || name.ends_with(".o") {
            kbuild_files.push(rel);
            continue;
        }
        let Ok(bytes) = std::fs::read(e.path()) else { continue };
        if trees.iter().any(|t| crate::extract::occurrences(&bytes, t.as_os_str().as_bytes()).next().is_some()) {
            naming.push(rel);
        }
    }
    let some = |v: &[String]| v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    match (kbuild_files.len(), naming.len()) {
        (0, 0) => Verdict::Pass,
        (k, 0) => Verdict::Fail(format!("{k} kbuild .cmd or .o files are in the archive, e.g. {}", some(&kbuild_files))),
        (_, n) => Verdict::Fail(format!(
            "{n} archived files name the build machine's tree ({}), e.g. {}; and {} .cmd or .o files",
            trees.iter().map(|t| t.display().to_string()).collect::<Vec<_>>().join(" or "),
            some(&naming),
            kbuild_files.len()
        )),
    }
}

/// The commands that `CONFIG_IKHEADERS_MODBUILD`'s help text (in
/// `init/Kconfig`'s text `kconfig`) gives for unpacking the archive on the
/// running system: its lines indented as code (a tab and four spaces).
pub fn help_recipe(kconfig: &str) -> Result<Vec<String>, String> {
    let block: Vec<&str> = kconfig
        .lines()
        .skip_while(|l| l.trim_end() != "config IKHEADERS_MODBUILD")
        .skip(1)
        .take_while(|l| !l.starts_with("config ") && !l.starts_with("menuconfig "))
        .collect();
    if block.is_empty() {
        return Err("init/Kconfig has no IKHEADERS_MODBUILD".into());
    }
    let cmds: Vec<String> = block.iter().filter_map(|l| l.strip_prefix("\t    ")).map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect();
    if cmds.is_empty() {
        return Err("IKHEADERS_MODBUILD's help text gives no commands (lines indented by a tab and four spaces) to unpack the archive".into());
    }
    Ok(cmds)
}

/// The guest command that runs `recipe` (the help text's commands, in
/// order, each only if the one before worked) and then proves that it put
/// a tree for this kernel where DKMS looks, with its programs executable,
/// and the symbol versions the kernel serves, if it does, as its
/// `Module.symvers`; the tree is removed after, to give the guest's
/// memory back.
pub fn help_recipe_command(recipe: &[String]) -> String {
    format!(
        "{} && b=/lib/modules/$(uname -r)/build && test -f $b/Makefile && test -x $b/scripts/basic/fixdep && \
         test \"$(cat $b/include/config/kernel.release)\" = \"$(uname -r)\" && \
         {{ test ! -e {SERVED} || cmp {SERVED} $b/Module.symvers; }} && echo KHTEST-RECIPE-OK; st=$?; \
         rm -rf \"$(readlink /lib/modules/$(uname -r)/build)\" /lib/modules/$(uname -r)/build; exit $st",
        recipe.join(" && "),
        SERVED = crate::symvers::SERVED
    )
}

/// The verdict on [`help_recipe_command`]'s run.
pub fn help_recipe_verdict(status: i32, text: &str) -> Verdict {
    if status == 0 && text.lines().any(|l| l.trim() == "KHTEST-RECIPE-OK") {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "the help text's commands, run with busybox, did not put this kernel's tree at /lib/modules/$(uname -r)/build (exit {status}):\n{}",
            text.trim_end()
        ))
    }
}

/// Build `testmod` against the unpacked archive with the documented recipe;
/// `ARCH` only when cross-building, and the toolchain's variables
/// (`CROSS_COMPILE`, `LLVM`). Warnings are expected (there is no
/// `Module.symvers`); an error or a missing `.ko` is a FAIL, a make that
/// runs past `limit` an ERROR.
pub fn build_testmod(
    headers: &Path,
    testmod: &Path,
    (arch, toolchain): (Arch, Toolchain),
    work: &Path,
    log: &Path,
    limit: Duration,
) -> Result<PathBuf, Verdict> {
    let mut vars: Vec<String> = toolchain.make_vars(arch).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !arch.is_host() {
        vars.insert(0, format!("ARCH={}", arch.kernel_arch()));
    }
    let run = |cmd: &mut std::process::Command, log: &Path| {
        let _ = std::fs::remove_file(log);
        crate::process::run_logged(cmd, log, limit)
    };
    let b = modbuild::build_module(headers, testmod, work, &vars, log, run).map_err(|e| Verdict::Error(format!("the module build: {e:#}")))?;
    match (b.ok, b.ko) {
        // Without Module.symvers modpost must warn: silence would mean the
        // archive carries a Module.symvers the contents check missed, or
        // modpost no longer says what it cannot check.
        (true, Some(_)) if b.errors.is_empty() && !b.warnings.iter().any(|w| w.contains("Module.symvers")) => {
            Err(Verdict::Fail(format!("the module built, but modpost did not warn that Module.symvers is missing (log: {})", log.display())))
        }
        (true, Some(ko)) if b.errors.is_empty() => Ok(ko),
        _ => Err(Verdict::Fail(modbuild_failure(&b.command, log))),
    }
}

/// Why the module build at `log` failed, as kbuild said it: its first
/// errors, or the log's last lines when it names none.
fn modbuild_failure(command: &str, log: &Path) -> String {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let failure = buildlog::first_failure(&text);
    let mut why = format!("`{command}` failed");
    match failure.line {
        Some(n) if !failure.lines.is_empty() => why += &format!("; first errors (line {n}):\n{}", failure.quote("    ")),
        _ => why += &format!("; the log names no error, it ends:\n    {}\n", crate::process::tail(log, 10).replace('\n', "\n    ")),
    }
    why + &format!("  log: {}", log.display())
}

/// The ELF machine of a file that starts with an ELF header, if it does.
pub fn elf_machine(path: &Path) -> Option<u16> {
    use std::io::Read;
    let mut head = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    kheaders_selftest::elf::machine(&head)
}

/// Every ELF file of the unpacked archive at `root` is for `arch`: the
/// device runs the archive's host programs (fixdep, modpost) itself. A
/// headers-only archive has none, which is fine.
pub fn elf_arch(root: &Path, arch: Arch) -> Verdict {
    let want = arch.facts().elf_machine;
    let mut wrong = Vec::new();
    for entry in walkdir::WalkDir::new(root).into_iter().filter_map(Result::ok).filter(|e| e.file_type().is_file()) {
        match elf_machine(entry.path()) {
            Some(m) if m != want => wrong.push(format!("{} (ELF machine {m})", entry.path().strip_prefix(root).unwrap_or(entry.path()).display())),
            _ => {}
        }
    }
    if wrong.is_empty() {
        return Verdict::Pass;
    }
    Verdict::Fail(format!(
        "{} ELF programs in the archive are not for {} (ELF machine {want}), so a device cannot run them: {}",
        wrong.len(),
        arch.kernel_arch(),
        wrong.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    ))
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
        let Some(want) = spdx_line(&src) else { continue };
        checked += 1;
        if spdx_line(&e).as_deref() != Some(want.as_str()) {
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

/// The first line of the file at `path` holding an SPDX tag, trimmed;
/// read only up to that line (it is the first or second line of nearly
/// every header).
fn spdx_line(path: &Path) -> Option<String> {
    use std::io::BufRead;
    let file = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    file.split(b'\n')
        .map_while(Result::ok)
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .find(|l| l.contains("SPDX-License-Identifier:"))
        .map(|l| l.trim().to_owned())
}

/// The verdict of the kselftest runner's TAP output for `test` (e.g.
/// `kheaders: run_kheaders_modbuild.sh`). In the harness every prerequisite
/// is present, so a skip of the whole test is a FAIL too; skips of single
/// subtests (module load on the host) are the script's business.
pub fn kselftest_tap(text: &str, test: &str) -> Verdict {
    let name = format!("selftests: {test}");
    let Some(r) = tap::parse(text, "").results.into_iter().find(|r| r.name == name) else {
        return Verdict::Fail(format!("the kselftest output has no result line for {name}"));
    };
    if !r.ok {
        let failed: String = tap::parse(text, "# ").results.iter().filter(|s| !s.ok).map(|s| format!("\n  {}{}", s.line, s.why())).collect();
        return Verdict::Fail(format!("{}{failed}", r.line));
    }
    if let Some(why) = r.skip() {
        return Verdict::Fail(format!("the kselftest skipped itself: {why}"));
    }
    Verdict::Pass
}

pub use kheaders_selftest::load::{GOODBYE, HELLO};

/// `dmesg` output after a step must contain `line`.
pub fn kernel_log_has(step: &str, dmesg: &str, line: &str) -> Verdict {
    if dmesg.lines().any(|l| l.contains(line)) {
        Verdict::Pass
    } else {
        let last: Vec<&str> = dmesg.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        Verdict::Fail(format!("after {step} the kernel log has no {line:?}; it ends with:\n    {}", last.join("\n    ")))
    }
}

/// In a `CONFIG_MODVERSIONS` kernel, a module built from the archive (no
/// `Module.symvers`, so no symbol versions) must be refused, for exactly
/// that reason: `insmod` fails with ENOEXEC and the kernel says which
/// version is missing. `output` is insmod's output then `dmesg`.
pub fn refused_without_versions(insmod_status: i32, output: &str) -> Verdict {
    let problems: Vec<&str> = [
        (insmod_status == 0, "insmod succeeded"),
        (!output.contains("invalid module format"), "insmod did not fail with ENOEXEC (invalid module format)"),
        (
            !output.lines().any(|l| l.contains(&format!("test: {}", kheaders_selftest::load::NO_VERSIONS))),
            "the kernel log does not say which symbol version is missing",
        ),
        (output.contains(HELLO), "the module's init ran"),
    ]
    .into_iter()
    .filter_map(|(bad, why)| bad.then_some(why))
    .collect();
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "expected a refusal for missing symbol versions: {}; insmod and dmesg said:\n    {}",
            problems.join("; "),
            output.trim().replace('\n', "\n    ")
        ))
    }
}

/// The archive's `.cmd` file (`kernel/.kheaders_data.tar.xz.cmd`) must
/// name the top-level Makefile among its dependencies (K16). fixdep, run
/// on a dependency file, takes its first entry for the source of the
/// target (`source_... :=`) and drops it from the dependencies: the
/// top-level Makefile, the list's first file, would change unseen.
pub fn tracked_inputs(cmd_text: &str) -> Verdict {
    if let Some(line) = cmd_text.lines().find(|l| l.starts_with("source_")) {
        return Verdict::Fail(format!(
            "the archive's .cmd file has `{}`: fixdep took that file for the source, so it is not a dependency and editing it does not rebuild the archive",
            line.trim()
        ));
    }
    let top = |l: &str| {
        let p = l.trim().trim_end_matches('\\').trim();
        p.strip_prefix("../").or_else(|| p.strip_prefix("./")).unwrap_or(p) == "Makefile"
    };
    if cmd_text.lines().any(top) {
        Verdict::Pass
    } else {
        Verdict::Fail("the archive's .cmd file does not list the top-level Makefile among its dependencies".into())
    }
}

/// The verdict on a RANDSTRUCT probe's configuration: the module-build
/// archive would carry `scripts/basic/randstruct.seed`, readable by every
/// user, so the two must not meet. A probe that could not switch
/// RANDSTRUCT on proves nothing.
pub fn randstruct_verdict(got: &crate::kbuild::Config, needs: &str) -> Verdict {
    let on = |k: &str| got.get(k).map(String::as_str) == Some("y");
    match (on("CONFIG_RANDSTRUCT"), on("CONFIG_IKHEADERS_MODBUILD")) {
        (true, true) => Verdict::Fail(
            "CONFIG_RANDSTRUCT and CONFIG_IKHEADERS_MODBUILD can both be set: the archive, readable by every user, \
             would carry scripts/basic/randstruct.seed"
                .into(),
        ),
        (true, false) => Verdict::Pass,
        (false, _) => Verdict::Error(format!("the probe could not switch CONFIG_RANDSTRUCT on, so it proves nothing: it needs {needs}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_makefile_must_be_a_dependency_not_fixdeps_source() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/cmd-files");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        // Recorded from the first 6.12 series, whose rule ran fixdep.
        let v = tracked_inputs(&read("fixdep-6.12-v1.cmd"));
        assert!(matches!(&v, Verdict::Fail(m) if m.contains("source_kernel/kheaders_data.tar.xz := ../Makefile")), "{v:?}");
        assert_eq!(tracked_inputs(&read("depfile-7.3.cmd")), Verdict::Pass);
        let v = tracked_inputs("deps_kernel/kheaders_data.tar.xz := \\\n  ../arch/x86/Makefile \\\n");
        assert!(matches!(v, Verdict::Fail(_)), "an arch Makefile is not the top-level one");
    }

    #[test]
    fn randstruct_beside_the_module_build_archive_fails_and_a_probe_without_it_proves_nothing() {
        let cfg = |t: &str| crate::kbuild::parse_config(t);
        let needs = "the plugin headers";
        let both = randstruct_verdict(&cfg("CONFIG_RANDSTRUCT=y\nCONFIG_IKHEADERS_MODBUILD=y\n"), needs);
        assert!(matches!(&both, Verdict::Fail(m) if m.contains("randstruct.seed")), "{both:?}");
        assert_eq!(randstruct_verdict(&cfg("CONFIG_RANDSTRUCT=y\n# CONFIG_IKHEADERS_MODBUILD is not set\n"), needs), Verdict::Pass);
        let off = randstruct_verdict(&cfg("CONFIG_IKHEADERS_MODBUILD=y\n"), needs);
        assert!(matches!(&off, Verdict::Error(m) if m.ends_with("it needs the plugin headers")), "{off:?}");
    }

    #[test]
    fn an_elf_program_of_another_machine_is_named() {
        let d = tempfile::tempdir().unwrap();
        let elf = |machine: u16| {
            let mut h = b"\x7fELF\x02\x01\x01".to_vec();
            h.resize(18, 0);
            h.extend_from_slice(&machine.to_le_bytes());
            h
        };
        std::fs::create_dir_all(d.path().join("scripts/basic")).unwrap();
        std::fs::write(d.path().join("scripts/basic/fixdep"), elf(183)).unwrap();
        std::fs::write(d.path().join("Makefile"), "all:\n").unwrap();
        assert_eq!(elf_arch(d.path(), Arch::Arm64), Verdict::Pass);
        let v = elf_arch(d.path(), Arch::X86_64);
        assert!(matches!(&v, Verdict::Fail(m) if m.contains("scripts/basic/fixdep (ELF machine 183)") && m.contains("not for x86_64")), "{v:?}");
    }

    #[test]
    fn modversions_refusal_must_be_the_documented_one() {
        let refused = "insmod: can't insert '/tmp/test.ko': invalid module format\n[ 2.1] test: no symbol version for module_layout\n";
        assert_eq!(refused_without_versions(1, refused), Verdict::Pass);
        assert!(
            matches!(refused_without_versions(0, "[ 2.1] Hello, world\n"), Verdict::Fail(m) if m.contains("insmod succeeded") && m.contains("init ran"))
        );
        let other = "insmod: can't insert '/tmp/test.ko': invalid module format\n[ 2.1] test: version magic '6.12' should be '6.13'\n";
        assert!(matches!(refused_without_versions(1, other), Verdict::Fail(m) if m.contains("which symbol version")));
    }

    #[test]
    fn a_failed_module_build_names_modposts_error_not_the_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("modbuild.log");
        std::fs::write(
            &log,
            "  CC [M]  /w/testmod/test.o\n  MODPOST /w/testmod/Module.symvers\nWARNING: Module.symvers is missing.\n\
             ERROR: modpost: \"khtest_nothing\" [/w/testmod/test.ko] undefined!\n\
             make[2]: *** [scripts/Makefile.modpost:145: /w/testmod/Module.symvers] Error 1\nmake[1]: *** [Makefile:1: modules] Error 2\n",
        )
        .unwrap();
        let why = modbuild_failure("make -C h M=/w/testmod modules", &log);
        let lines: Vec<&str> = why.lines().map(str::trim).collect();
        assert_eq!(lines[1], "ERROR: modpost: \"khtest_nothing\" [/w/testmod/test.ko] undefined!", "{why}");
        assert!(lines[2].starts_with("make[2]: ***") && lines[3].contains("modbuild.log") && lines.len() == 4, "{why}");
        std::fs::write(&log, "Killed\n").unwrap();
        assert!(modbuild_failure("make", &log).contains("names no error, it ends:\n    Killed"));
    }

    /// Whether a process whose command line has `marker` is running.
    fn running(marker: &str) -> bool {
        let o = std::process::Command::new("pgrep").arg("-f").arg(marker).output().unwrap();
        !o.stdout.is_empty()
    }

    #[test]
    fn a_hung_module_build_is_an_error_at_its_deadline_and_leaves_nothing_running() {
        let d = tempfile::tempdir().unwrap();
        let (headers, testmod) = (d.path().join("headers"), d.path().join("testmod"));
        std::fs::create_dir_all(&headers).unwrap();
        std::fs::create_dir_all(&testmod).unwrap();
        std::fs::write(testmod.join("test.c"), "").unwrap();
        let marker = format!("khtest-hung-modbuild-{}", std::process::id());
        std::fs::write(headers.join("Makefile"), format!("modules:\n\tsh -c 'sleep 300; echo {marker}'\n")).unwrap();
        let log = d.path().join("modbuild.log");
        let t = std::time::Instant::now();
        let work = d.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let v = build_testmod(&headers, &testmod, (Arch::X86_64, Toolchain::Gcc), &work, &log, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(&v, Verdict::Error(m) if m.contains("timed out after 1 s") && m.contains("modbuild.log")), "{v:?}");
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
        assert!(!running(&marker), "the hung build's child outlived its deadline");
    }

    #[test]
    fn decode_memory_is_read_from_xz_and_bounded() {
        let fixture = |name: &str| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/xz-list").join(name)).unwrap();
        // Recorded from the archive with xz -9's dictionary, and from the
        // same tar with an 8 MiB one.
        let nine = fixture("preset-9.txt");
        assert_eq!(parse_xz_memory(&nine), Some(67_174_456));
        assert!(matches!(decode_memory_verdict(&nine), Verdict::Fail(m) if m.contains("needs 64.1 MiB (67174456 bytes")), "{nine}");
        let six = fixture("preset-6e.txt");
        assert_eq!(parse_xz_memory(&six), Some(8_454_200));
        assert_eq!(decode_memory_verdict(&six), Verdict::Pass);
        assert!(matches!(decode_memory_verdict("name\tx\n"), Verdict::Error(_)));
    }

    #[test]
    fn kernel_log_check() {
        assert_eq!(kernel_log_has("insmod", "[ 1.0] test: loading\n[ 1.1] Hello, world\n", HELLO), Verdict::Pass);
        let v = kernel_log_has("rmmod", "[ 1.1] Hello, world\n", GOODBYE);
        assert!(matches!(&v, Verdict::Fail(r) if r.contains("after rmmod") && r.contains("Hello, world")), "{v:?}");
    }

    #[test]
    fn an_archive_with_a_cmd_file_an_object_or_the_build_path_fails() {
        let d = tempfile::tempdir().unwrap();
        let (root, tree) = (d.path().join("a"), Path::new("/srv/build/linux-6.12"));
        std::fs::create_dir_all(root.join("include/generated")).unwrap();
        std::fs::write(root.join("include/generated/autoconf.h"), "#define CONFIG_X 1\n").unwrap();
        std::fs::write(root.join("Makefile"), "srctree := ..\n").unwrap();
        assert_eq!(no_build_machine_traces(&root, &[tree]), Verdict::Pass);
        // What the 6.12 series archived: kbuild's record of a generated header.
        let cmd = root.join("include/generated/.unistd_64.h.cmd");
        std::fs::write(&cmd, "savedcmd_include/generated/unistd_64.h := sh ../scripts/syscallhdr.sh\n").unwrap();
        let v = no_build_machine_traces(&root, &[tree]);
        assert!(matches!(&v, Verdict::Fail(m) if m.contains("1 kbuild .cmd or .o") && m.contains(".unistd_64.h.cmd")), "{v:?}");
        std::fs::remove_file(&cmd).unwrap();
        std::fs::write(root.join("scripts.o"), b"\x7fELF").unwrap();
        assert!(matches!(no_build_machine_traces(&root, &[tree]), Verdict::Fail(_)), "an object");
        std::fs::remove_file(root.join("scripts.o")).unwrap();
        std::fs::write(root.join("Makefile"), "srctree := /srv/build/linux-6.12\n").unwrap();
        let v = no_build_machine_traces(&root, &[Path::new("/elsewhere"), tree]);
        assert!(matches!(&v, Verdict::Fail(m) if m.contains("1 archived files name") && m.contains("Makefile")), "{v:?}");
    }

    #[test]
    fn the_help_texts_recipe_is_its_code_lines() {
        let kconfig = "config IKHEADERS\n\tbool \"x\"\n\t    not this\n\nconfig IKHEADERS_MODBUILD\n\tbool \"y\"\n\thelp\n\t  Text.\n\n\
                       \t    d=/usr/src/k\n\t    mkdir -p $d\n\n\t  More text.\n\nconfig LOG_BUF_SHIFT\n\t    nor this\n";
        assert_eq!(help_recipe(kconfig).unwrap(), ["d=/usr/src/k", "mkdir -p $d"]);
        let none = kconfig.replace("\t    d=/usr/src/k\n\t    mkdir -p $d\n", "");
        assert!(help_recipe(&none).unwrap_err().contains("gives no commands"));
        assert!(help_recipe("config IKHEADERS\n").unwrap_err().contains("no IKHEADERS_MODBUILD"));
        let cmd = help_recipe_command(&help_recipe(kconfig).unwrap());
        assert!(cmd.starts_with("d=/usr/src/k && mkdir -p $d && b=/lib/modules/") && !cmd.contains('\n'), "{cmd}");
        assert_eq!(help_recipe_verdict(0, "KHTEST-RECIPE-OK\n"), Verdict::Pass);
        let v = help_recipe_verdict(1, "tar: invalid option -- 'J'\n");
        assert!(matches!(&v, Verdict::Fail(m) if m.contains("exit 1") && m.contains("invalid option")), "{v:?}");
        assert!(matches!(help_recipe_verdict(0, ""), Verdict::Fail(_)), "no marker, no pass");
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
    fn served_files_and_sizes() {
        let got = parse_stat("noise\nKHTEST-STAT 5118080 /sys/kernel/kheaders.tar.xz\nKHTEST-STAT 0 /proc/kheaders.tar.xz\n");
        assert_eq!(got.len(), 2);
        let both = ["/sys/kernel/kheaders.tar.xz", "/proc/kheaders.tar.xz"];
        let v = served_sizes(&got, &both, 5118080);
        assert!(matches!(&v, Verdict::Fail(r) if r == "/proc/kheaders.tar.xz is 0 bytes, the archive 5118080"), "{v:?}");
        assert!(matches!(served_sizes(&got[..1], &both, 5118080), Verdict::Fail(r) if r.contains("/proc/kheaders.tar.xz is missing")));
        assert_eq!(served_sizes(&got[..1], &both[..1], 5118080), Verdict::Pass);
        assert!(matches!(served_sizes(&got, &[], 0), Verdict::Fail(r) if r.contains("exists and should not")));
        assert_eq!(served_sizes(&[], &[], 0), Verdict::Pass);
    }

    #[test]
    fn kselftest_results() {
        let t = "kheaders: run_kheaders_modbuild.sh";
        let pass = "TAP version 13\n1..1\n# selftests: kheaders: run_kheaders_modbuild.sh\n# ok 1 archive extracts\n\
                    # ok 4 module loads # SKIP not running\nok 1 selftests: kheaders: run_kheaders_modbuild.sh\n";
        assert_eq!(kselftest_tap(pass, t), Verdict::Pass);
        let fail = "# ok 1 archive extracts\n# not ok 3 module builds against the archive\n\
                    not ok 1 selftests: kheaders: run_kheaders_modbuild.sh # exit=1\n";
        assert!(matches!(kselftest_tap(fail, t), Verdict::Fail(r) if r.contains("not ok 3 module builds")));
        // The script prints the module build's log as diagnostics before
        // its `not ok`: the verdict quotes the first error, not the log.
        let diag = "# ok 2 archive has no Module.symvers\n# # make: Entering directory '/tmp/h'\n\
                    # #   CC [M]  /tmp/m/test.o\n# # /tmp/m/test.c:9:2: error: expected ';' before '}' token\n\
                    # # make[2]: *** [scripts/Makefile.build:229: /tmp/m/test.o] Error 1\n# # make[1]: *** [Makefile:1: x] Error 2\n\
                    # not ok 3 module builds against the archive\n# ok 4 module loads # SKIP no module\n\
                    not ok 1 selftests: kheaders: run_kheaders_modbuild.sh # exit=1\n";
        let v = kselftest_tap(diag, t);
        let Verdict::Fail(r) = &v else { panic!("{v:?}") };
        let lines: Vec<&str> = r.lines().map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "not ok 1 selftests: kheaders: run_kheaders_modbuild.sh # exit=1",
                "not ok 3 module builds against the archive",
                "/tmp/m/test.c:9:2: error: expected ';' before '}' token",
                "make[2]: *** [scripts/Makefile.build:229: /tmp/m/test.o] Error 1",
            ]
        );
        let skip = "# 1..0 # SKIP no archive\nok 1 selftests: kheaders: run_kheaders_modbuild.sh # SKIP\n";
        assert!(matches!(kselftest_tap(skip, t), Verdict::Fail(r) if r.contains("skipped")));
        assert!(matches!(kselftest_tap("make: *** No rule\n", t), Verdict::Fail(r) if r.contains("no result line")));
    }

    #[test]
    fn noop_rebuild_leaves_the_archive_alone() {
        let t0 = std::time::SystemTime::UNIX_EPOCH;
        let a = Snapshot { bytes: b"xz".to_vec(), mtime: t0 };
        let touched = Snapshot { bytes: b"xz".to_vec(), mtime: t0 + std::time::Duration::from_secs(1) };
        let changed = Snapshot { bytes: b"xy".to_vec(), mtime: t0 };
        assert_eq!(noop_rebuild(&a, &a, "  CALL scripts/checksyscalls.sh\n", true), Verdict::Pass);
        assert!(matches!(noop_rebuild(&a, &touched, "", true), Verdict::Fail(r) if r.contains("mtime")));
        assert!(matches!(noop_rebuild(&a, &changed, "", true), Verdict::Fail(r) if r.contains("bytes")));
        let chk = "  CHK     kernel/kheaders_data.tar.xz\n";
        assert!(matches!(noop_rebuild(&a, &a, chk, true), Verdict::Fail(r) if r.contains("ran the archive generator")));
        assert_eq!(noop_rebuild(&a, &a, chk, false), Verdict::Pass);
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
        std::fs::create_dir_all(root.join("include/dt-bindings")).unwrap();
        assert!(matches!(contents(&root, false), Verdict::Fail(r) if r.contains("nothing to check")));
        std::fs::write(root.join("include/leds.h"), "#include <dt-bindings/leds.h>\n").unwrap();
        assert!(matches!(contents(&root, false), Verdict::Fail(r) if r.contains("include/leds.h -> include/dt-bindings/leds.h")));
        std::fs::write(root.join("include/dt-bindings/leds.h"), "").unwrap();
        assert_eq!(contents(&root, false), Verdict::Pass);
        assert!(matches!(contents(&root, true), Verdict::Fail(r) if r.contains("scripts/mod/modpost")));
        std::fs::write(root.join("Module.symvers"), "").unwrap();
        assert!(matches!(contents(&root, false), Verdict::Fail(r) if r.contains("Module.symvers")));

        let bad = d.path().join("bad.tar.xz");
        std::fs::write(&bad, b"not xz at all").unwrap();
        let v = crate::blame::of(extract(&bad, &d.path().join("out")).unwrap_err());
        assert!(matches!(&v, Verdict::Fail(r) if r.contains("damaged") && r.contains("bad.tar.xz")), "{v:?}");
        assert!(!d.path().join("out").exists());
    }
}
