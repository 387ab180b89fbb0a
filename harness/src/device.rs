//! The device: what a device with no host does with its own
//! archive. A second guest boots with the device's userland ([`userland`])
//! and the kernel tree shared read-only over virtio-9p, and runs inside
//! it, against the running kernel's archive:
//!
//! - the kselftest, `make -C tools/testing/selftests TARGETS=kheaders
//!   run_tests` (no `KHEADERS_ARCHIVE`), to `device-kselftest.log`;
//! - the Rust port, a static (musl) binary carried in the initramfs, to
//!   `device-port.log`;
//! - the README's recipe for tools that expect a headers package
//!   (`images/khtest-recipe`): `kheaders install`, the test module built
//!   through `/lib/modules/$(uname -r)/build`, `kheaders remove`, to
//!   `device-recipe.log`.
//!
//! The first two unpack the archive, build the test module with the
//! guest's own compiler and the archive's own host programs, and load it;
//! each is judged by its four TAP results ([`judge`]), the recipe by its
//! three ([`judge_recipe`]). The lane that boots the guest and records the
//! outcome is `cell/device.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::matrix::Arch;
use crate::process::{last_lines, run_logged};
use crate::report::Verdict;
use crate::tap::{self, Plan};
use crate::vm::Share;
use crate::Project;

/// The 9p mount tags `images/khtest-device` mounts.
pub const ROOT_TAG: &str = "khroot";
pub const TREE_TAG: &str = "khtree";

/// The guest's memory: the tmpfs takes the unpacked archive twice and the
/// module builds.
pub const MEMORY_MIB: u32 = 2048;

/// The shares of the device guest: the userland as its root, the tree.
pub fn shares(userland: &Path, tree: &Path) -> Vec<Share> {
    vec![Share { tag: ROOT_TAG, path: userland.to_owned() }, Share { tag: TREE_TAG, path: tree.to_owned() }]
}

/// The longest the port's static build may take (cold, with its crates).
const PORT_BUILD_LIMIT: Duration = Duration::from_secs(900);

/// The port's programs: the kselftest's port and `kheaders` (install).
pub const PORT_PROGRAMS: [&str; 2] = ["kheaders-selftest", "kheaders"];

/// The cargo target directory for the port under `cache_dir`: one per
/// content of the port's sources (and the workspace's manifest and lock
/// file). Cargo judges freshness per source path, and the binaries it
/// copies to `release/` are the last build's: copies of the repository
/// with other port sources (a fault run's) sharing one directory could
/// hand each other their binaries.
pub fn port_target_dir(cache_dir: &Path, project: &Project) -> Result<PathBuf> {
    let mut parts = Vec::new();
    for f in ["Cargo.toml", "Cargo.lock"] {
        let path = project.root.join(f);
        parts.push((f.as_bytes().to_vec(), std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?));
    }
    let port = project.root.join("selftests/port");
    for e in walkdir::WalkDir::new(&port).sort_by_file_name() {
        let e = e.with_context(|| format!("cannot list {}", port.display()))?;
        if e.file_type().is_file() {
            let name = e.path().strip_prefix(&project.root)?.as_os_str().as_encoded_bytes().to_vec();
            parts.push((name, std::fs::read(e.path()).with_context(|| format!("cannot read {}", e.path().display()))?));
        }
    }
    let flat: Vec<&[u8]> = parts.iter().flat_map(|(n, c)| [n.as_slice(), c.as_slice()]).collect();
    Ok(cache_dir.join(crate::cache::key(&flat)))
}

/// Build the kselftest port's crate static for `arch`'s musl target into
/// `target_dir` (cargo keeps it up to date); its [`PORT_PROGRAMS`]. The
/// aarch64 linker is set in `.cargo/config.toml`.
pub fn port_binaries(project: &Project, arch: Arch, target_dir: &Path, log: &Path) -> Result<Vec<PathBuf>> {
    let target = arch.facts().musl_target;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&project.root)
        .args(["build", "--release", "--locked", "-p", "kheaders-selftest", "--target", target])
        .arg("--target-dir")
        .arg(target_dir)
        // Not the harness's own build's flags (a coverage or nextest run).
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    let status = run_logged(&mut cmd, log, PORT_BUILD_LIMIT)?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("target may not be installed") {
            bail!("the Rust target {target} is not installed: run `rustup target add {target}` (scripts/setup-host.sh does)");
        }
        bail!("cannot build the kselftest port for {target} (log: {}):\n{}", log.display(), crate::process::tail(log, 10));
    }
    let bins: Vec<PathBuf> = PORT_PROGRAMS.iter().map(|p| target_dir.join(target).join("release").join(p)).collect();
    if let Some(missing) = bins.iter().find(|b| !b.is_file()) {
        bail!("cargo built no {}", missing.display());
    }
    Ok(bins)
}

/// The guest command that makes `/device` with the kernel tree at `tree`.
pub fn mount_command(tree: &Path) -> String {
    format!("khtest-device mount {}", shell_quote(&tree.to_string_lossy()))
}

/// The guest command that runs `command` in the device's root, with the
/// variables `env` (the toolchain's, such as `LLVM`) in its environment,
/// where make and the programs it runs see them.
pub fn run_command(env: &[(&str, String)], command: &str) -> String {
    let vars: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    format!("khtest-device run {}", shell_quote(&format!("{vars}{command}")))
}

/// The guest command that runs the kselftest in the device's root.
pub fn kselftest_command(tree: &Path, env: &[(&str, String)]) -> String {
    run_command(env, &format!("make -C {}/tools/testing/selftests O=/tmp/kselftest TARGETS=kheaders run_tests", tree.to_string_lossy()))
}

/// The guest command that runs the README's device recipe
/// (`images/khtest-recipe`) with the test module's sources in `tree`.
pub fn recipe_command(tree: &Path, w1: bool, keep: Option<&str>, env: &[(&str, String)]) -> String {
    let testmod = format!("{}/tools/testing/selftests/kheaders/testmod", tree.to_string_lossy());
    let w = if w1 { " W=1" } else { "" };
    let k = keep.map(|dir| format!(" -k {dir}")).unwrap_or_default();
    run_command(env, &format!("/tmp/khtest-recipe{k} {testmod}{w}"))
}

/// What kbuild prints when a module is built with another compiler than
/// the kernel's (`CC_VERSION_TEXT` against `CONFIG_CC_VERSION_TEXT`): the
/// device must build with the kernel's toolchain (`LLVM=` for clang).
const OTHER_COMPILER: &str = "the compiler differs from the one used to build the kernel";

/// For a clang-built kernel: FAIL if the test's output shows a module
/// built with another compiler than the kernel's, which could build and
/// even load, and prove nothing about the toolchain the archive was made
/// for. Not for GCC cross builds: there kbuild warns on every device
/// build, because the kernel's compiler is named `aarch64-linux-gnu-gcc`
/// and the device's `gcc`, the same GCC, and the warning cannot tell the
/// two cases apart.
pub fn kernels_compiler(what: &str, text: &str) -> Verdict {
    match text.lines().find(|l| l.contains(OTHER_COMPILER)) {
        None => Verdict::Pass,
        Some(l) => Verdict::Fail(format!(
            "{what}: a module was built with another compiler than the kernel's (kbuild: {:?}): the device must use the kernel's toolchain",
            l.trim_start_matches("# ").trim()
        )),
    }
}

/// The verdict on the recipe's TAP: three results, all passed; for a
/// headers-only archive, `kheaders install` refused, saying why, and the
/// rest skipped.
pub fn judge_recipe(text: &str, expect: Expect) -> Verdict {
    let what = "device recipe (kheaders install)";
    let tap = tap::parse(text, "");
    match tap.plan {
        Some(Plan { count: 0, skip }) => return Verdict::Error(format!("{what} skipped itself on the device: {}", skip.unwrap_or_default())),
        Some(Plan { count: 3, .. }) => {}
        _ => return Verdict::Fail(format!("{what} printed no plan of 3; its output ends:\n    {}", last_lines(text, 8).join("\n    "))),
    }
    let mut problems = Vec::new();
    for n in 1..=3 {
        let Some(r) = tap.result(n) else {
            problems.push(format!("no result {n}"));
            continue;
        };
        let refused_headers_only = n == 1 && !r.ok && r.diag.iter().any(|d| d.contains("headers only"));
        match expect {
            Expect::HeadersOnly if n == 1 && !refused_headers_only => {
                problems.push(format!("kheaders install must refuse a headers-only archive, saying so: {}{}", r.line, r.why()))
            }
            Expect::HeadersOnly if n > 1 && r.skip().is_none() => problems.push(format!("result {n} must be skipped: {}", r.line)),
            Expect::HeadersOnly => {}
            _ if !r.ok => problems.push(format!("{}{}", r.line, r.why())),
            _ if r.skip().is_some() => problems.push(format!("result {n} was skipped: {}", r.line)),
            _ => {}
        }
    }
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("{what}: {}", problems.join("\n  ")))
    }
}

/// `text`'s TAP if it plans `count` results; else the verdict: ERROR for
/// a test that skipped itself whole (its reason says what the userland
/// lacks), FAIL for no plan or another count.
pub fn planned(what: &str, text: &str, count: usize) -> Result<tap::Tap, Verdict> {
    let tap = tap::parse(text, "");
    match tap.plan {
        Some(Plan { count: 0, skip }) => Err(Verdict::Error(format!("{what} skipped itself: {}", skip.unwrap_or_default()))),
        Some(Plan { count: c, .. }) if c == count => Ok(tap),
        _ => Err(Verdict::Fail(format!("{what} printed no plan of {count}; its output ends:\n    {}", last_lines(text, 8).join("\n    ")))),
    }
}

/// The verdict on a device test's TAP whose `count` results must all
/// pass, none skipped.
pub fn all_ok(what: &str, text: &str, count: usize) -> Verdict {
    let tap = match planned(what, text, count) {
        Ok(tap) => tap,
        Err(v) => return v,
    };
    let problems: Vec<String> = (1..=count)
        .filter_map(|n| match tap.result(n) {
            None => Some(format!("no result {n}")),
            Some(r) if !r.ok => Some(format!("{}{}", r.line, r.why())),
            Some(r) => r.skip().map(|s| format!("result {n} ({}) was skipped: {s}", r.name)),
        })
        .collect();
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("{what}: {}", problems.join("\n  ")))
    }
}

/// The guest command that runs the port against the running kernel's
/// archive at `archive`.
pub fn port_command(archive: &str, env: &[(&str, String)]) -> String {
    run_command(env, &format!("/tmp/kheaders-selftest {archive}"))
}

/// `s` as one single-quoted shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The verdict on `khtest-device readonly`'s exit status and output.
pub fn readonly_verdict(status: i32, text: &str) -> Verdict {
    match text.lines().find_map(|l| l.trim().strip_prefix("KHTEST-READONLY:")) {
        Some(why) if status == 0 => {
            tracing::debug!("the export refused a write: {why}");
            Verdict::Pass
        }
        _ => Verdict::Error(format!("the device guest could write to the host's export (or the probe failed), exit {status}:\n{}", text.trim())),
    }
}

/// What the cell's archive must let the device do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Build the module and load it.
    Loads,
    /// Build the module with the symbol versions the kernel serves, and
    /// load it carrying them.
    LoadsWithVersions,
    /// Build the module and see it refused for having no symbol versions.
    Refused,
    /// Unpack only: a headers-only archive cannot build a module.
    HeadersOnly,
}

impl Expect {
    /// Result 4's name, as both tests print it.
    fn load_name(self) -> &'static str {
        match self {
            Expect::Refused => "module is refused: it has no symbol versions (CONFIG_MODVERSIONS)",
            Expect::LoadsWithVersions => "module loads, with the symbol versions the kernel serves",
            _ => "module loads",
        }
    }
}

/// Whether `text` reports a kselftest runner TIMEOUT that cannot be real:
/// its `timeout set to N` is longer than the `host_secs` the whole command
/// took on the host. The guest's clock jumped (seen here when the machine
/// running QEMU was paused and resumed); the command deserves a second run.
pub fn spurious_timeout(text: &str, host_secs: f64) -> bool {
    let runner = tap::parse(text, "");
    let Some(r) = runner.results.iter().find(|r| r.timed_out()) else { return false };
    let set = r.diag.iter().find_map(|d| d.strip_prefix("timeout set to ")?.trim().parse::<f64>().ok());
    set.is_some_and(|t| host_secs < t)
}

/// The verdict on one test's TAP (`what` names it): four results, as
/// `expect` says. A test that skipped itself whole lacks something in the
/// userland: ERROR, with its reason.
pub fn judge(what: &str, text: &str, prefix: &str, expect: Expect) -> Verdict {
    // The kselftest runner ends a test at its settings' timeout.
    if let Some(r) = tap::parse(text, "").results.iter().find(|r| !r.ok && r.timed_out()) {
        return Verdict::Error(format!("{what} hung on the device and was ended: {}", r.line));
    }
    let tap = tap::parse(text, prefix);
    match tap.plan {
        Some(Plan { count: 0, skip }) => return Verdict::Error(format!("{what} skipped itself on the device: {}", skip.unwrap_or_default())),
        Some(Plan { count: 4, .. }) => {}
        Some(Plan { count, .. }) => return Verdict::Fail(format!("{what}: a plan of {count} results, not 4")),
        None => return Verdict::Fail(format!("{what} printed no TAP plan; its output ends:\n    {}", last_lines(text, 8).join("\n    "))),
    }
    let mut problems = Vec::new();
    for n in 1..=4 {
        let Some(r) = tap.result(n) else {
            problems.push(format!("no result {n}"));
            continue;
        };
        let headers_only = expect == Expect::HeadersOnly && n >= 3;
        if !r.ok {
            problems.push(format!("not ok {n} {}{}", r.name, r.why()));
        } else if headers_only && r.skip().is_none_or(str::is_empty) {
            problems.push(format!("result {n} ({}) must be skipped with a reason: the archive has headers only", r.name));
        } else if let (Some(skip), false) = (r.skip(), headers_only) {
            problems.push(format!("result {n} ({}) was skipped: {skip}", r.name));
        } else if n == 4 && !headers_only && r.name != expect.load_name() {
            problems.push(format!("result 4 is '{}', not '{}'", r.name, expect.load_name()));
        }
    }
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("{what}: {}", problems.join("\n  ")))
    }
}

/// Write a guest command's output to the cell's `log`.
pub fn save(log: &Path, text: &str) -> Result<()> {
    std::fs::write(log, text).with_context(|| format!("cannot write {}", log.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies of the repository share the port's build only when its
    /// sources are the same: an edit to the port, in any copy, is another
    /// target directory.
    #[test]
    fn the_port_target_dir_follows_the_port_sources_not_the_copy() {
        let copy = |port_src: &str| {
            let t = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(t.path().join("selftests/port/src")).unwrap();
            std::fs::write(t.path().join("Cargo.toml"), "[workspace]\n").unwrap();
            std::fs::write(t.path().join("Cargo.lock"), "version = 4\n").unwrap();
            std::fs::write(t.path().join("selftests/port/src/main.rs"), port_src).unwrap();
            t
        };
        let dir = |t: &tempfile::TempDir| port_target_dir(Path::new("/cache/device-port"), &Project { root: t.path().to_owned() }).unwrap();
        let (a, b, edited) = (copy("fn main() {}\n"), copy("fn main() {}\n"), copy("fn main() { panic!() }\n"));
        assert_eq!(dir(&a), dir(&b));
        assert_ne!(dir(&a), dir(&edited));
        assert!(dir(&a).starts_with("/cache/device-port"));
        std::fs::write(a.path().join("Cargo.lock"), "version = 3\n").unwrap();
        assert_ne!(dir(&a), dir(&b));
    }

    const RUNNER_PASS: &str = "TAP version 13\n1..1\n# timeout set to 600\n# selftests: kheaders: run_kheaders_modbuild.sh\n\
        # TAP version 13\n# 1..4\n# # archive: /sys/kernel/kheaders.tar.xz\n# ok 1 archive extracts\n# ok 2 archive has no Module.symvers\n\
        # ok 3 module builds against the archive\n# ok 4 module loads\nok 1 selftests: kheaders: run_kheaders_modbuild.sh\n";

    #[test]
    fn four_oks_pass_and_the_runners_own_line_is_not_a_result() {
        assert_eq!(judge("kselftest", RUNNER_PASS, "# ", Expect::Loads), Verdict::Pass);
        let tap = tap::parse(RUNNER_PASS, "# ");
        assert_eq!(tap.results.len(), 4);
        assert_eq!(tap.results[0].diag, ["archive: /sys/kernel/kheaders.tar.xz"]);
    }

    #[test]
    fn an_exec_format_error_in_the_build_is_a_fail_quoting_it() {
        let text = RUNNER_PASS.replace(
            "# ok 3 module builds against the archive",
            "# # /bin/sh: 1: scripts/basic/fixdep: Exec format error\n# # make[2]: *** [scripts/Makefile.build:229: /tmp/t/test.o] Error 126\n# not ok 3 module builds against the archive",
        );
        let v = judge("kselftest", &text, "# ", Expect::Loads);
        assert!(matches!(&v, Verdict::Fail(m) if m.contains("not ok 3") && m.contains("Exec format error")), "{v:?}");
    }

    #[test]
    fn a_module_built_with_another_compiler_than_the_kernels_is_a_fail() {
        // As the kselftest prints it: the build's warnings after result 3.
        let text = RUNNER_PASS.replace(
            "# ok 3 module builds against the archive",
            "# ok 3 module builds against the archive\n# # warning: the compiler differs from the one used to build the kernel",
        );
        assert_eq!(judge("kselftest", &text, "# ", Expect::Loads), Verdict::Pass, "the TAP alone passes");
        let v = kernels_compiler("kselftest", &text);
        assert!(matches!(&v, Verdict::Fail(m) if m.starts_with("kselftest: a module was built with another compiler than the kernel's")), "{v:?}");
        assert_eq!(kernels_compiler("kselftest", RUNNER_PASS), Verdict::Pass);
    }

    #[test]
    fn a_skip_is_never_a_pass_unless_the_archive_has_headers_only() {
        let skipped = "KTAP version 1\n1..4\nok 1 archive extracts\nok 2 archive has no Module.symvers\n\
            ok 3 module builds against the archive # SKIP headers-only archive (no Makefile)\nok 4 module loads # SKIP headers-only archive (no Makefile)\n";
        assert_eq!(judge("port", skipped, "", Expect::HeadersOnly), Verdict::Pass);
        assert!(matches!(judge("port", skipped, "", Expect::Loads), Verdict::Fail(m) if m.contains("result 3") && m.contains("was skipped")));
        let built = skipped.replace(" # SKIP headers-only archive (no Makefile)", "");
        assert!(matches!(judge("port", &built, "", Expect::HeadersOnly), Verdict::Fail(m) if m.contains("must be skipped")));
    }

    #[test]
    fn result_four_must_be_the_cells_expectation() {
        let port = "KTAP version 1\n1..4\nok 1 a\nok 2 b\nok 3 c\nok 4 module loads\n";
        assert_eq!(judge("port", port, "", Expect::Loads), Verdict::Pass);
        assert!(matches!(judge("port", port, "", Expect::Refused), Verdict::Fail(m) if m.contains("not 'module is refused")));
        let refused = port.replace("module loads", Expect::Refused.load_name());
        assert_eq!(judge("port", &refused, "", Expect::Refused), Verdict::Pass);
    }

    #[test]
    fn a_whole_skip_is_an_error_naming_what_is_missing_and_no_plan_a_fail() {
        let v = judge(
            "kselftest",
            "# TAP version 13\n# 1..0 # SKIP 'gcc' not found: building a module needs make, xz and a C compiler\n",
            "# ",
            Expect::Loads,
        );
        assert!(matches!(&v, Verdict::Error(m) if m.contains("'gcc' not found")), "{v:?}");
        assert!(matches!(judge("port", "Kernel panic", "", Expect::Loads), Verdict::Fail(m) if m.contains("no TAP plan")));
        let hung = "# 1..4\n# ok 1 archive extracts\nnot ok 1 selftests: kheaders: run_kheaders_modbuild.sh # TIMEOUT 600 seconds\n";
        let with_setting = format!("# timeout set to 600\n{hung}");
        assert!(spurious_timeout(&with_setting, 16.2), "600 s cannot pass in 16 s of host time");
        assert!(!spurious_timeout(&with_setting, 601.0), "a real hang");
        assert!(!spurious_timeout(RUNNER_PASS, 16.2), "no timeout at all");
        assert!(matches!(judge("kselftest", hung, "# ", Expect::Loads), Verdict::Error(m) if m.contains("hung on the device")));
    }

    #[test]
    fn the_recipe_passes_when_installed_built_and_removed_and_refuses_headers_only() {
        let good = "TAP version 13\n1..3\n# kheaders: 6105 files in /usr/src/kheaders-6.12.118\nok 1 kheaders install\nok 2 module builds through /lib/modules/6.12.118/build\nok 3 kheaders remove\n";
        assert_eq!(judge_recipe(good, Expect::Loads), Verdict::Pass);
        assert!(matches!(judge_recipe(good, Expect::HeadersOnly), Verdict::Fail(m) if m.contains("must refuse")));
        let refused = "1..3\n# kheaders: the archive has headers only (no Makefile): it cannot build modules\nnot ok 1 kheaders install\n\
            ok 2 module builds through /lib/modules/6.12.117/build # SKIP not installed\nok 3 kheaders remove # SKIP not installed\n";
        assert_eq!(judge_recipe(refused, Expect::HeadersOnly), Verdict::Pass);
        assert!(
            matches!(judge_recipe(refused, Expect::Loads), Verdict::Fail(m) if m.contains("not ok 1 kheaders install") && m.contains("headers only"))
        );
        let broken = good.replace("ok 2 module", "# make: *** [Makefile:1: all] Error 2\nnot ok 2 module");
        assert!(matches!(judge_recipe(&broken, Expect::Refused), Verdict::Fail(m) if m.contains("not ok 2") && m.contains("Error 2")));
        assert!(matches!(judge_recipe("no tap here", Expect::Loads), Verdict::Fail(m) if m.contains("no plan of 3")));
    }

    #[test]
    fn the_guest_commands_quote_their_paths() {
        assert_eq!(port_command("/proc/kheaders.tar.xz", &[]), "khtest-device run '/tmp/kheaders-selftest /proc/kheaders.tar.xz'");
        assert!(kselftest_command(Path::new("/c/t"), &[])
            .contains("run 'make -C /c/t/tools/testing/selftests O=/tmp/kselftest TARGETS=kheaders run_tests"));
        let llvm = crate::matrix::Toolchain::Llvm.device_vars();
        assert_eq!(
            recipe_command(Path::new("/c/t"), false, None, &llvm),
            "khtest-device run 'LLVM=-19 /tmp/khtest-recipe /c/t/tools/testing/selftests/kheaders/testmod'"
        );
        assert_eq!(
            recipe_command(Path::new("/c/t"), true, Some("/tmp/m"), &[]),
            "khtest-device run '/tmp/khtest-recipe -k /tmp/m /c/t/tools/testing/selftests/kheaders/testmod W=1'"
        );
        assert_eq!(
            crate::symvers::device_command(Path::new("/c/t"), Some("/tmp/m"), &[]),
            "khtest-device run '/tmp/khtest-symvers -b /tmp/m /c/t/tools/testing/selftests/kheaders/testmod'"
        );
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(readonly_verdict(0, "KHTEST-READONLY: touch: Read-only file system\n"), Verdict::Pass);
        assert!(matches!(readonly_verdict(1, "KHTEST-WRITABLE: ..."), Verdict::Error(_)));
    }
}
