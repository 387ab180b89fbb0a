//! The archive's build rules (K6, K7, K9, K16, K17, K20), driven in a
//! scratch object tree, so that the cell's own tree stays as built. The
//! scratch builds from a copy of the source tree at a second path, with
//! `O=` outside it, where kbuild's `srctree` is absolute:
//!
//! - that second, independent build of the archive gives the same bytes
//!   as the cell's (whose `O=` is inside its tree): nothing of where the
//!   trees were gets in (K9, K20);
//! - adding a header, changing it again at once, changing
//!   `KBUILD_BUILD_TIMESTAMP`, changing the configuration and removing the
//!   header each regenerate the archive, which then shows the change (K6);
//! - a newer generator script regenerates it; `touch .config` with
//!   nothing changed does not, nor do files that another target (such as
//!   `scripts_gdb`) writes into the object tree's `scripts/` (K16);
//! - the generator prints nothing of its own when it works, and an error of
//!   its copy step fails it with a message naming the file (K7);
//! - a lower memory limit for xz in `XZ_DEFAULTS` fails the generator,
//!   saying so, rather than give other bytes (K17).
//!
//! Each step's make output is kept as `regen-STEP.log` in the cell directory.
//!
//! The steps' outcome depends only on what the build's cache key covers
//! (source, series, toolchain, arch, config) and on the steps themselves
//! ([`Step::ALL`], [`STEPS_VERSION`]), so a passing run is remembered under
//! those and not repeated, like a build: the checks are then marked cached
//! (and their names say so). `KHTEST_FRESH=1` (or `khtest run --fresh`)
//! runs them again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use kheaders_selftest::archive;
use serde::{Deserialize, Serialize};

use crate::cache::key;
use crate::kbuild::{Build, BUILD_TIMESTAMP};
use crate::process::run_logged;
use crate::report::Verdict;
use crate::scratch;

/// A second `KBUILD_BUILD_TIMESTAMP`, one day after the usual one.
const OTHER_TIMESTAMP: (&str, u64) = ("Mon Nov 18 00:00:00 UTC 2024", 1_731_888_000);

/// The archive's generator, and the script it runs to rebuild the host
/// programs for a cross build's target: both prerequisites of the archive.
const GENERATOR: &str = "kernel/gen_kheaders.sh";
const HOST_SCRIPT: &str = "scripts/package/rebuild-host-programs";

/// An object-tree header that both archive modes list (`include/generated`).
const PROBE: &str = "include/generated/khtest-probe.h";

/// What the stray-scripts step writes into the object tree, where
/// `scripts_gdb` writes (a file, then a symlink): names no kernel uses.
const STRAY_SCRIPTS: [&str; 2] = ["scripts/gdb/linux/khtest-constants.py", "scripts/gdb/linux/khtest-utils.py"];

/// What the config step sets, and finds again in the archived `autoconf.h`:
/// an option that changes no other archived file, which would regenerate
/// the archive even when `autoconf.h` is not tracked: not `LOCALVERSION`
/// (`kernel.release`, `utsrelease.h`), nor `DEFAULT_HOSTNAME` (arm64's vDSO
/// reads it through `linux/uts.h`, and its rebuild rewrites
/// `vdso-offsets.h`). Nothing the scratch tree builds reads this one, on
/// either arch; [`rewritten_archived`] checks that it stays so.
const CONFIG_CHANGE: (&str, &str) = ("CONFIG_DEFAULT_INIT", "/khtest-regen");

/// What syncconfig rewrites at every configuration change, and the
/// generator's dependency file leaves out (kernel/kheaders-config stands
/// for them): the archived files the config step may rewrite.
const CONFIG_FILES: [&str; 3] = ["include/generated/autoconf.h", "include/config/auto.conf", "include/generated/rustc_cfg"];

/// The regen steps, in the order they run. Their names are the checks'
/// names; the list is part of the cache key ([`passed_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Reproducible,
    Quiet,
    NewHeader,
    XzLimit,
    ChangedHeader,
    Timestamp,
    Config,
    TouchedConfig,
    StrayScripts,
    RemovedHeader,
    EditedGenerator,
    EditedHostScript,
    GeneratorError,
    Interrupted,
}

impl Step {
    pub const ALL: [Step; 14] = [
        Step::Reproducible,
        Step::Quiet,
        Step::NewHeader,
        Step::XzLimit,
        Step::ChangedHeader,
        Step::Timestamp,
        Step::Config,
        Step::TouchedConfig,
        Step::StrayScripts,
        Step::RemovedHeader,
        Step::EditedGenerator,
        Step::EditedHostScript,
        Step::GeneratorError,
        Step::Interrupted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Reproducible => "a second build, from the source at another path with O= outside it, gives the same bytes (K9, K20)",
            Step::Quiet => "the generator prints nothing of its own (K7)",
            Step::NewHeader => "a new header regenerates the archive (K6)",
            Step::XzLimit => "a low XZ_DEFAULTS memory limit fails the generator, not other bytes (K17)",
            Step::ChangedHeader => "a header changed again at once regenerates it (K6)",
            Step::Timestamp => "a new KBUILD_BUILD_TIMESTAMP regenerates it (K6)",
            Step::Config => "a config change that only autoconf.h shows regenerates it (K6)",
            Step::TouchedConfig => "touch .config with nothing changed regenerates nothing (K16)",
            Step::StrayScripts => "files another target writes into scripts/ regenerate nothing (K16)",
            Step::RemovedHeader => "a removed header leaves the archive (K6)",
            Step::EditedGenerator => "a newer gen_kheaders.sh regenerates the archive (K16)",
            Step::EditedHostScript => "a newer rebuild-host-programs regenerates the archive (K16)",
            Step::GeneratorError => "a copy error fails the generator, naming the file (K7)",
            Step::Interrupted => "an interrupted generator leaves no temporary file (K16)",
        }
    }
}

/// The version of the steps' way of judging: bump it when a step changes
/// what it does or how it judges (adding or removing a step changes the
/// key by itself), so that no outcome remembered from the old steps is
/// taken for theirs.
pub const STEPS_VERSION: u32 = 3;

/// One step's outcome.
pub type Outcome = (Step, Verdict);

/// What a run whose every step passed leaves in the cache.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Passed {
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    pub steps: Vec<String>,
}

/// Where the outcome of the steps for the build keyed `build_key` is kept.
/// The key names what the outcome depends on: the build key (the source
/// and the series, the generator with them, the toolchain, the arch, the
/// kind of build and the config: `cell::build_key`), and the steps (their
/// list and [`STEPS_VERSION`]).
pub fn passed_path(results_dir: &Path, build_key: &str) -> PathBuf {
    let steps: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
    let version = STEPS_VERSION.to_string();
    results_dir.join(format!("regen-{}.json", key(&[build_key.as_bytes(), version.as_bytes(), steps.join("\n").as_bytes()])))
}

/// The steps of an earlier run with the same inputs, all passed; `None`
/// if there was none (or its record cannot be read).
pub fn cached(path: &Path) -> Option<Passed> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Remember `steps` when every one passed.
pub fn remember(path: &Path, steps: &[Outcome]) -> Result<()> {
    if steps.iter().any(|(_, v)| *v != Verdict::Pass) {
        return Ok(());
    }
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let passed = Passed { at, steps: steps.iter().map(|(s, _)| s.name().to_owned()).collect() };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Written whole, then renamed: a killed run leaves no half record.
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&passed)?).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

struct Scratch<'a> {
    build: Build,
    /// The cell directory: step logs go there.
    dir: &'a Path,
    limit: Duration,
}

/// Run every step against `scratch` (an object tree of `src`, a copy of
/// `cell`'s source tree at another path; made if missing) until one does
/// not pass. `cell_archive` is the archive that `cell` built.
pub fn run(cell: &Build, cell_archive: &Path, src: &Path, scratch: &Path, dir: &Path, limit: Duration) -> Result<Vec<Outcome>> {
    let s = Scratch { build: Build { src: src.to_owned(), obj: scratch.to_owned(), ..cell.clone() }, dir, limit };
    s.reset(&cell.obj.join(".config"))?;
    let mut outcomes = Vec::new();
    for step in Step::ALL {
        let v = s.step(step, cell_archive)?;
        let passed = v == Verdict::Pass;
        outcomes.push((step, v));
        if !passed {
            break;
        }
    }
    Ok(outcomes)
}

impl Scratch<'_> {
    /// Do `step` in the scratch tree, as left by the steps before it, and
    /// judge it.
    fn step(&self, step: Step, cell_archive: &Path) -> Result<Verdict> {
        let probe = |value: &str| write(&self.build.obj.join(PROBE), &format!("/* a khtest probe */\n#define KHTEST_PROBE {value}\n"));
        let regenerates = |name: &str, timestamp: &str, shows: &dyn Fn(&Path) -> Result<Verdict>| -> Result<Verdict> {
            let (log, archive) = self.generate(name, timestamp)?;
            regenerated(self.dir, &log, &archive, shows)
        };
        match step {
            Step::Reproducible => {
                let (_, archive) = self.generate("reproducible", BUILD_TIMESTAMP.0)?;
                same_archive(self.dir, &archive, cell_archive)
            }
            // The same build's output: the generator must have said nothing.
            Step::Quiet => Ok(quiet_generator(&self.log("reproducible")?)),
            Step::NewHeader => {
                probe("1")?;
                regenerates("new-header", BUILD_TIMESTAMP.0, &|a| probe_is(a, Some("1")))
            }
            // A header changed under a low xz memory limit: xz must refuse,
            // not compress with other settings.
            Step::XzLimit => {
                probe("3")?;
                self.xz_limited()
            }
            // At once: a comparison of minute-resolution `ls -l` output
            // would miss it.
            Step::ChangedHeader => {
                probe("2")?;
                regenerates("changed-header", BUILD_TIMESTAMP.0, &|a| probe_is(a, Some("2")))
            }
            Step::Timestamp => regenerates("timestamp", OTHER_TIMESTAMP.0, &|a| mtime_is(a, OTHER_TIMESTAMP.1)),
            // Every archived file is the archive's prerequisite: if the
            // change rewrote one, that alone regenerates it, and the step
            // proves nothing about the configuration.
            Step::Config => {
                let since = std::time::SystemTime::now();
                self.set_config_string(CONFIG_CHANGE)?;
                regenerates("config", OTHER_TIMESTAMP.0, &|a| match rewritten_archived(&self.build.obj, since)?.as_slice() {
                    [] => autoconf_has_change(a),
                    files => Ok(config_step_inconclusive(files)),
                })
            }
            // syncconfig rewrites auto.conf and autoconf.h whenever .config
            // is newer, whatever changed.
            Step::TouchedConfig => {
                self.build.touch_config()?;
                let (log, _) = self.generate("touched-config", OTHER_TIMESTAMP.0)?;
                Ok(not_generated(&log, "touch .config"))
            }
            Step::StrayScripts => self.stray_scripts(),
            Step::RemovedHeader => {
                std::fs::remove_file(self.build.obj.join(PROBE)).with_context(|| format!("cannot remove {PROBE}"))?;
                regenerates("removed-header", OTHER_TIMESTAMP.0, &|a| probe_is(a, None))
            }
            Step::EditedGenerator => self.edited_input(GENERATOR, "edited-generator"),
            // The generator runs it in cross builds: its output is in the
            // archive then.
            Step::EditedHostScript => self.edited_input(HOST_SCRIPT, "edited-host-script"),
            Step::GeneratorError => self.generator_error(),
            Step::Interrupted => self.interrupted_generator(),
        }
    }

    /// The make output kept for the step `name`.
    fn log(&self, name: &str) -> Result<String> {
        let log = self.dir.join(format!("regen-{name}.log"));
        std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))
    }

    /// Back to the cell's state: its `.config`, no probe header.
    fn reset(&self, config: &Path) -> Result<()> {
        let obj = &self.build.obj;
        std::fs::create_dir_all(obj).with_context(|| format!("cannot create {}", obj.display()))?;
        let _ = std::fs::remove_file(obj.join(PROBE));
        remove_stray_scripts(obj);
        let want = std::fs::read(config).with_context(|| format!("cannot read {}", config.display()))?;
        // Only when it differs: a rewritten .config makes kbuild run
        // syncconfig again.
        if std::fs::read(obj.join(".config")).ok().as_deref() != Some(&want[..]) {
            std::fs::write(obj.join(".config"), want).with_context(|| format!("cannot write {}/.config", obj.display()))?;
        }
        Ok(())
    }

    /// `make kernel/kheaders.o`; the step's log text and the archive.
    fn generate(&self, step: &str, timestamp: &str) -> Result<(String, PathBuf)> {
        let log = self.dir.join(format!("regen-{step}.log"));
        let archive = self.build.archive_only(timestamp, &log, self.limit)?;
        Ok((self.log(step)?, archive))
    }

    /// Regenerate with `XZ_DEFAULTS` asking xz to stay under 100 MiB, less
    /// than the archive's settings need: the build must fail, and say why.
    fn xz_limited(&self) -> Result<Verdict> {
        let log = self.dir.join("regen-xz-limit.log");
        let env = [("XZ_DEFAULTS", "--memlimit-compress=100MiB")];
        let outcome = self.build.archive_only_with(BUILD_TIMESTAMP.0, &env, &log, self.limit);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(match outcome {
            Err(e) if e.downcast_ref::<crate::kbuild::MakeFailed>().is_some() => xz_limit_verdict(false, &text),
            Err(e) => return Err(e),
            Ok(_) => xz_limit_verdict(true, &text),
        })
    }

    fn set_config_string(&self, (name, value): (&str, &str)) -> Result<()> {
        let path = self.build.obj.join(".config");
        let text = std::fs::read_to_string(&path)?;
        let mut out: String = text.lines().filter(|l| !l.starts_with(&format!("{name}="))).map(|l| format!("{l}\n")).collect();
        out.push_str(&format!("{name}=\"{value}\"\n"));
        write(&path, &out)
    }

    /// Make a script of the source tree that the archive depends on
    /// (`rel`) newer, as an edit does: make must regenerate the archive.
    /// The script is in the source tree that every cell of this kernel
    /// shares, so only its mtime changes, and goes back at once: another
    /// build of this tree in between would at worst regenerate its archive
    /// once. A tree without it (no series) skips the step.
    fn edited_input(&self, rel: &str, step: &str) -> Result<Verdict> {
        let script = self.build.src.join(rel);
        if !script.exists() {
            return Ok(Verdict::Skip(format!("the tree has no {rel}")));
        }
        // Opened for writing only while its time is set: make cannot run a
        // file that is open for writing (ETXTBSY).
        let set_mtime = |t: std::time::SystemTime| -> Result<()> {
            let file = std::fs::File::options().write(true).open(&script).with_context(|| format!("cannot open {}", script.display()))?;
            file.set_modified(t).with_context(|| format!("cannot set the mtime of {}", script.display()))
        };
        let was = std::fs::metadata(&script).and_then(|m| m.modified()).with_context(|| format!("cannot stat {}", script.display()))?;
        set_mtime(std::time::SystemTime::now())?;
        let outcome = self.generate(step, OTHER_TIMESTAMP.0);
        set_mtime(was)?;
        let (log, _) = outcome?;
        let name = rel.rsplit('/').next().unwrap_or(rel);
        Ok(if generated(&log) {
            Verdict::Pass
        } else {
            Verdict::Fail(format!("a newer {name} did not regenerate the archive (no GEN line): the script is not its prerequisite"))
        })
    }

    /// Write into the object tree's scripts/ what `scripts_gdb` writes
    /// there (a generated `constants.py`, and in O= builds absolute
    /// symlinks to the source tree's scripts), as if it had run after the
    /// archive's list was made: the next make must regenerate nothing. The
    /// list finds the object tree's scripts/ but leaves out the gdb
    /// helpers; a list that kept them would change, and the archive would
    /// hold whatever another target had written by then.
    fn stray_scripts(&self) -> Result<Verdict> {
        let obj = &self.build.obj;
        let (file, link) = (obj.join(STRAY_SCRIPTS[0]), obj.join(STRAY_SCRIPTS[1]));
        write(&file, "# a khtest stand-in for scripts_gdb's output\n")?;
        let target = self.build.src.join("scripts/gdb/linux/utils.py");
        std::os::unix::fs::symlink(&target, &link).with_context(|| format!("cannot link {} to {}", link.display(), target.display()))?;
        let outcome = self.generate("stray-scripts", OTHER_TIMESTAMP.0);
        remove_stray_scripts(obj);
        let (log, _) = outcome?;
        Ok(not_generated(&log, "a file written into scripts/ after the list was made"))
    }

    /// Run the generator by hand on a list naming a file that does not
    /// exist: it must fail, say which file, and leave no archive.
    fn generator_error(&self) -> Result<Verdict> {
        let work = tempfile::tempdir_in(&self.build.obj).context("cannot make a temporary directory in the scratch tree")?;
        let (source, object) = ("include/linux/kernel.h", "include/generated/khtest-missing.h");
        let lists = [
            (work.path().join("srclist"), format!("{}\n", srctree(&self.build).join(source).display())),
            (work.path().join("objlist"), format!("{object}\n")),
        ];
        for (path, text) in &lists {
            write(path, text)?;
        }
        let lists: Vec<PathBuf> = lists.into_iter().map(|(p, _)| p).collect();
        let out = work.path().join("out.tar.xz");
        let log = self.dir.join("regen-generator-error.log");
        let status = run_logged(&mut generator_command(&self.build, &lists, &out, ""), &log, self.limit)?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(generator_failed(status.success(), &text, out.exists(), "khtest-missing.h"))
    }

    /// Run the generator by hand on the cell's whole list and interrupt it
    /// as make does on ^C (SIGINT to the process group) once it has
    /// started copying: it must leave none of its temporary files.
    fn interrupted_generator(&self) -> Result<Verdict> {
        let work = tempfile::tempdir_in(&self.build.obj).context("cannot make a temporary directory in the scratch tree")?;
        let lists = generator_lists(&self.build);
        let out = work.path().join("out.tar.xz");
        let log = std::fs::File::create(self.dir.join("regen-interrupted.log"))?;
        let mut cmd = generator_command(&self.build, &lists, &out, "");
        cmd.stdout(log.try_clone()?).stderr(log);
        let mut child = crate::process::spawn_group(&mut cmd).context("cannot start gen_kheaders.sh")?;
        let staging = work.path().join(GENERATOR_STAGING_DIR);
        let started = crate::process::Deadline::after(Duration::from_secs(60));
        while !staging.exists() && !started.passed() && child.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        let running = child.try_wait()?.is_none();
        // SAFETY: kill(2) on the child's own process group.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGINT) };
        let status = crate::process::wait_limited(child, self.limit)?;
        // The generator writes its dependency file first; make
        // clean removes it with every other `.*.d`.
        let depfile = format!(".{}.d", out.file_name().unwrap_or_default().to_string_lossy());
        let left: Vec<String> =
            std::fs::read_dir(work.path())?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| *n != depfile).collect();
        Ok(interrupted_verdict(running, status.success(), &left))
    }
}

/// The lists kbuild makes for `kernel/gen_kheaders.sh` in `build`'s object
/// tree: the source-tree files (each starting with `$(srctree)`), then the
/// object-tree files. Both series use mainline's generator (6.17 onwards),
/// the 6.12 one as a backport.
pub fn generator_lists(build: &Build) -> Vec<PathBuf> {
    ["kernel/kheaders-srclist", "kernel/kheaders-objlist"].iter().map(|l| build.obj.join(l)).collect()
}

/// The directory the generator stages the archive's files in, beside its
/// output.
const GENERATOR_STAGING_DIR: &str = ".tmp_dir";

/// `$(srctree)` as kbuild sets it: `..` for an object tree right inside
/// the source tree. The source list starts every path with it.
pub fn srctree(build: &Build) -> PathBuf {
    if build.obj.parent() == Some(build.src.as_path()) {
        PathBuf::from("..")
    } else {
        build.src.clone()
    }
}

/// `gen_kheaders.sh <out> <srclist> <objlist> <timestamp>` as
/// kernel/Makefile runs it in `build`'s object tree, with the host's tools.
pub fn generator_command(build: &Build, lists: &[PathBuf], out: &Path, timestamp: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg(build.src.join(GENERATOR)).arg(out).args(lists).arg(timestamp);
    cmd.current_dir(&build.obj)
        .env("srctree", srctree(build))
        .env("SRCARCH", build.arch.srcarch())
        .env("XZ", "xz")
        .env("TAR", "tar")
        .env("CC", "cc")
        .env("HOSTCC", "cc")
        .env("STRIP", "strip")
        .env("CONFIG_SHELL", "sh");
    cmd
}

/// Remove the stray-scripts step's files, and the directories it made if
/// they are left empty (a GDB_SCRIPTS build has its own files there).
fn remove_stray_scripts(obj: &Path) {
    for f in STRAY_SCRIPTS {
        let _ = std::fs::remove_file(obj.join(f));
    }
    for d in ["scripts/gdb/linux", "scripts/gdb"] {
        let _ = std::fs::remove_dir(obj.join(d));
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Did this make output include the generator's kbuild line?
pub fn generated(log: &str) -> bool {
    log.lines().any(|l| l.trim_start().starts_with("GEN") && l.contains("kheaders_data.tar.xz"))
}

/// Lines that the generator's tools print (rather than kbuild): a working
/// generator must print none.
pub fn generator_noise(log: &str) -> Vec<&str> {
    const TOOLS: &[&str] = &["cpio:", "tar:", "xz:", "strip:", "perl:", "find:", "sed:", "xargs:", "gen_kheaders.sh:"];
    log.lines()
        .filter(|l| {
            let t = l.trim_start();
            TOOLS.iter().any(|p| t.starts_with(p)) || t.contains("/gen_kheaders.sh:")
        })
        .collect()
}

fn quiet_generator(log: &str) -> Verdict {
    let noise = generator_noise(log);
    if noise.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("the generator printed {} line(s) of its own: {}", noise.len(), noise.join(" | ")))
    }
}

/// The generator must have run (kbuild's `GEN` line) and `shows` must hold
/// for the new archive, unpacked under `dir`.
fn regenerated(dir: &Path, log: &str, archive: &Path, shows: &dyn Fn(&Path) -> Result<Verdict>) -> Result<Verdict> {
    if !generated(log) {
        return Ok(Verdict::Fail("make did not regenerate the archive (no GEN line for kheaders_data.tar.xz)".into()));
    }
    let unpacked = scratch::new_tree(dir, ".regen-")?;
    let root = unpacked.path().join("a");
    archive::extract_file(archive, &root).with_context(|| format!("cannot unpack {}", archive.display()))?;
    shows(&root)
}

fn probe_is(root: &Path, value: Option<&str>) -> Result<Verdict> {
    let text = std::fs::read_to_string(root.join(PROBE)).ok();
    let got = text.as_deref().and_then(|t| t.lines().find_map(|l| l.strip_prefix("#define KHTEST_PROBE ")));
    Ok(match (value, got) {
        (Some(w), Some(g)) if w == g.trim() => Verdict::Pass,
        (None, None) if text.is_none() => Verdict::Pass,
        (Some(w), g) => Verdict::Fail(format!("{PROBE} should define KHTEST_PROBE {w}; the archive has {g:?}")),
        (None, _) => Verdict::Fail(format!("{PROBE} was removed but is still in the archive")),
    })
}

fn mtime_is(root: &Path, epoch: u64) -> Result<Verdict> {
    let m = std::fs::metadata(root.join(PROBE))?.modified()?;
    let got = m.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(if got == epoch {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("archive entries carry mtime {got}, not the new KBUILD_BUILD_TIMESTAMP ({epoch})"))
    })
}

fn autoconf_has_change(root: &Path) -> Result<Verdict> {
    let p = root.join("include/generated/autoconf.h");
    let text = std::fs::read_to_string(&p).with_context(|| format!("the archive has no {}", p.display()))?;
    let (name, value) = CONFIG_CHANGE;
    let want = format!("#define {name} \"{value}\"");
    Ok(if text.lines().any(|l| l == want) {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("the archived autoconf.h does not have `{want}`: the archive kept the old configuration"))
    })
}

/// The files the archive takes from the object tree `obj` (its list,
/// `kernel/kheaders-objlist`) that were rewritten after `since`, other
/// than the configuration's own ([`CONFIG_FILES`]).
fn rewritten_archived(obj: &Path, since: std::time::SystemTime) -> Result<Vec<String>> {
    let list = obj.join("kernel/kheaders-objlist");
    let text = std::fs::read_to_string(&list).with_context(|| format!("cannot read {}", list.display()))?;
    Ok(text
        .lines()
        .filter(|rel| !CONFIG_FILES.contains(rel))
        .filter(|rel| std::fs::metadata(obj.join(rel)).and_then(|m| m.modified()).is_ok_and(|m| m > since))
        .map(str::to_owned)
        .collect())
}

/// The config step's change rewrote other archived files: a harness fault.
fn config_step_inconclusive(files: &[String]) -> Verdict {
    let (name, _) = CONFIG_CHANGE;
    Verdict::Error(format!(
        "the config step's change of {name} also rewrote {} archived file(s) ({}), which regenerate the archive by themselves: \
         the step cannot show that the configuration is tracked; regen.rs's CONFIG_CHANGE needs an option nothing in the scratch tree reads",
        files.len(),
        files.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    ))
}

/// Compare two archives; on a difference, name the entries that differ
/// (unpacking both under `dir`).
fn same_archive(dir: &Path, a: &Path, b: &Path) -> Result<Verdict> {
    let (x, y) = (std::fs::read(a)?, std::fs::read(b)?);
    if x == y {
        return Ok(Verdict::Pass);
    }
    let tmp = scratch::new_tree(dir, ".regen-")?;
    let (ra, rb) = (tmp.path().join("a"), tmp.path().join("b"));
    archive::extract_file(a, &ra)?;
    archive::extract_file(b, &rb)?;
    let diffs = tree_differences(&ra, &rb)?;
    Ok(Verdict::Fail(format!(
        "two builds with the same KBUILD_BUILD_TIMESTAMP differ ({} vs {} bytes; the second from the source at another path, O= outside it): {}",
        x.len(),
        y.len(),
        if diffs.is_empty() { "same files and contents, so the tar metadata differs".to_owned() } else { diffs.join(", ") }
    )))
}

/// Up to ten relative paths whose presence or contents differ.
fn tree_differences(a: &Path, b: &Path) -> Result<Vec<String>> {
    let files = |root: &Path| -> std::collections::BTreeSet<PathBuf> {
        walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_type().is_dir())
            .filter_map(|e| e.path().strip_prefix(root).ok().map(Path::to_owned))
            .collect()
    };
    let (fa, fb) = (files(a), files(b));
    let mut out = Vec::new();
    for p in fa.union(&fb) {
        let same = fa.contains(p) && fb.contains(p) && std::fs::read(a.join(p))? == std::fs::read(b.join(p))?;
        if !same {
            out.push(p.display().to_string());
            if out.len() == 10 {
                break;
            }
        }
    }
    Ok(out)
}

/// The verdict on an interrupted generator, from whether it was still
/// running when the signal was sent, whether it still succeeded and what it
/// left in its output directory.
pub fn interrupted_verdict(running: bool, succeeded: bool, left: &[String]) -> Verdict {
    if !running {
        return Verdict::Error("the generator had ended before the interrupt was sent (see regen-interrupted.log): the check proves nothing".into());
    }
    if succeeded {
        return Verdict::Error("the generator finished before the interrupt reached it: the check proves nothing".into());
    }
    if left.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("an interrupted generator left {} behind (make clean must not be the only way out)", left.join(", ")))
    }
}

/// A step that must not run the generator.
fn not_generated(log: &str, what: &str) -> Verdict {
    if generated(log) {
        Verdict::Fail(format!("{what} regenerated the archive: kbuild printed its GEN line"))
    } else {
        Verdict::Pass
    }
}

/// The verdict on a regeneration under a memory limit lower than the
/// archive's xz settings need: it must fail with xz's message.
pub fn xz_limit_verdict(built: bool, log: &str) -> Verdict {
    let xz: Vec<&str> = log.lines().filter(|l| l.trim_start().starts_with("xz:")).collect();
    if built {
        return Verdict::Fail(format!(
            "with XZ_DEFAULTS=--memlimit-compress=100MiB the archive was still built, with settings xz chose to fit: its bytes depend on \
             the builder's xz defaults ({})",
            if xz.is_empty() { "xz said nothing".to_owned() } else { xz.join(" | ") }
        ));
    }
    if !log.contains("Memory usage limit is too low") {
        return Verdict::Fail(format!("the regeneration failed, but not for xz's memory limit: {}", xz.join(" | ")));
    }
    Verdict::Pass
}

/// The verdict on a generator run that had to fail on `missing`.
pub fn generator_failed(succeeded: bool, output: &str, archive_written: bool, missing: &str) -> Verdict {
    if succeeded {
        return Verdict::Fail(format!("the generator exited 0 although {missing} does not exist"));
    }
    if archive_written {
        return Verdict::Fail("the generator failed but left an archive behind".into());
    }
    if !output.contains(missing) {
        let said: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
        let said = match &said[said.len().saturating_sub(3)..] {
            [] => "it printed nothing".to_owned(),
            last => format!("it printed, last:\n    {}", last.join("\n    ")),
        };
        return Verdict::Fail(format!("the generator failed without saying why (its error was discarded): no mention of {missing}; {said}"));
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_runs_as_kbuild_runs_it() {
        let build = |obj: &str| Build {
            arch: crate::matrix::Arch::X86_64,
            toolchain: crate::matrix::Toolchain::Gcc,
            src: "/src".into(),
            obj: obj.into(),
            kind: crate::matrix::BuildKind::OutOfTree,
            ccache: None,
        };
        let lists = generator_lists(&build("/obj"));
        assert_eq!(lists, [PathBuf::from("/obj/kernel/kheaders-srclist"), PathBuf::from("/obj/kernel/kheaders-objlist")]);
        let cmd = generator_command(&build("/obj"), &lists, Path::new("/w/out.tar.xz"), "@0");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["/src/kernel/gen_kheaders.sh", "/w/out.tar.xz", "/obj/kernel/kheaders-srclist", "/obj/kernel/kheaders-objlist", "@0"]);
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/obj")));
        let srctree = |obj: &str| {
            let cmd = generator_command(&build(obj), &lists, Path::new("/w/out.tar.xz"), "");
            cmd.get_envs().find(|(k, _)| *k == "srctree").and_then(|(_, v)| v).map(|v| v.to_string_lossy().into_owned())
        };
        // kbuild's own choice, which the source list's lines start with.
        assert_eq!(srctree("/obj").as_deref(), Some("/src"));
        assert_eq!(srctree("/src/build").as_deref(), Some(".."));
    }

    #[test]
    fn an_interrupted_generator_must_stop_and_leave_nothing() {
        assert_eq!(interrupted_verdict(true, false, &[]), Verdict::Pass);
        let v = interrupted_verdict(true, false, &[".tmp_kheaders".into(), "out.tar.xz.tmp".into()]);
        assert!(matches!(&v, Verdict::Fail(m) if m.contains(".tmp_kheaders, out.tar.xz.tmp")), "{v:?}");
        assert!(matches!(interrupted_verdict(true, true, &[]), Verdict::Error(_)), "a run the signal missed proves nothing");
        // It failed on its own, before the signal: nothing was interrupted.
        assert!(matches!(interrupted_verdict(false, false, &[]), Verdict::Error(_)), "a run that ended first proves nothing");
    }

    #[test]
    fn finds_the_gen_line_only() {
        assert!(generated("  SYNC    include/config/auto.conf\n  GEN     kernel/kheaders_data.tar.xz\n  CC [M]  kernel/kheaders.o\n"));
        assert!(!generated("  CHK     kernel/kheaders_data.tar.xz\n  CC      kernel/kheaders.o\n"));
        assert!(!generated("  GEN     Makefile\n"));
    }

    #[test]
    fn tool_output_is_noise_kbuild_lines_are_not() {
        let log = "make[1]: Entering directory '/b'\n  GEN     kernel/kheaders_data.tar.xz\n\
                   cpio: include/x.h: Cannot stat\n/src/kernel/gen_kheaders.sh: 12: oops\ntar: removing leading '/'\n";
        assert_eq!(
            generator_noise(log),
            vec!["cpio: include/x.h: Cannot stat", "/src/kernel/gen_kheaders.sh: 12: oops", "tar: removing leading '/'"]
        );
        assert_eq!(quiet_generator("  GEN     kernel/kheaders_data.tar.xz\n"), Verdict::Pass);
    }

    #[test]
    fn a_generator_error_must_fail_name_the_file_and_leave_nothing() {
        let msg = "cpio: include/generated/khtest-missing.h: Cannot stat: No such file or directory\n";
        assert_eq!(generator_failed(false, msg, false, "khtest-missing.h"), Verdict::Pass);
        assert!(matches!(generator_failed(true, "", true, "khtest-missing.h"), Verdict::Fail(m) if m.contains("exited 0")));
        assert!(matches!(generator_failed(false, msg, true, "khtest-missing.h"), Verdict::Fail(m) if m.contains("left an archive")));
        assert!(
            matches!(generator_failed(false, "", false, "khtest-missing.h"), Verdict::Fail(m) if m.contains("discarded") && m.ends_with("it printed nothing"))
        );
        let other = "+ set -e\nxz: (stdin): Compressed data is corrupt\n";
        assert!(
            matches!(generator_failed(false, other, false, "khtest-missing.h"), Verdict::Fail(m) if m.ends_with("last:\n    + set -e\n    xz: (stdin): Compressed data is corrupt"))
        );
    }

    #[test]
    fn a_low_xz_limit_must_fail_the_build_with_xzs_reason() {
        let refused = "  GEN     kernel/kheaders_data.tar.xz\nxz: Memory usage limit is too low for the given filter setup.\n\
                       xz: 154 MiB of memory is required. The limit is 100 MiB.\nmake[3]: *** [x] Error 1\n";
        assert_eq!(xz_limit_verdict(false, refused), Verdict::Pass);
        let adjusted =
            "  GEN     kernel/kheaders_data.tar.xz\nxz: Switching to single-threaded mode to not exceed the memory usage limit of 100 MiB\n";
        assert!(matches!(xz_limit_verdict(true, adjusted), Verdict::Fail(m) if m.contains("Switching to single-threaded")));
        assert!(matches!(xz_limit_verdict(false, "cp: x: No such file\n"), Verdict::Fail(m) if m.contains("not for xz's memory limit")));
    }

    #[test]
    fn only_a_run_that_passed_is_remembered_and_per_build() {
        let d = tempfile::tempdir().unwrap();
        let path = passed_path(d.path(), "build-a");
        assert_ne!(path, passed_path(d.path(), "build-b"));
        assert!(cached(&path).is_none());
        remember(&path, &[(Step::Reproducible, Verdict::Pass), (Step::Quiet, Verdict::Fail("no GEN line".into()))]).unwrap();
        assert!(cached(&path).is_none(), "a failing run must run again");
        remember(&path, &[(Step::Reproducible, Verdict::Pass), (Step::Quiet, Verdict::Pass)]).unwrap();
        let got = cached(&path).unwrap();
        assert_eq!(got.steps, [Step::Reproducible.name(), Step::Quiet.name()]);
        assert!(got.at > 0);
        std::fs::write(&path, "{ half").unwrap();
        assert!(cached(&path).is_none(), "an unreadable record is no record");
    }

    #[test]
    fn the_config_step_is_inconclusive_when_its_change_rewrote_an_archived_file() {
        let obj = tempfile::tempdir().unwrap();
        let o = obj.path();
        let list =
            "arch/arm64/include/generated/vdso-offsets.h\ninclude/generated/autoconf.h\ninclude/config/auto.conf\ninclude/generated/rustc_cfg\ninclude/generated/bounds.h\n";
        write(&o.join("kernel/kheaders-objlist"), list).unwrap();
        write(&o.join("include/generated/bounds.h"), "old\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let since = std::time::SystemTime::now();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rewritten_archived(o, since).unwrap(), Vec::<String>::new());
        // syncconfig's files may change: the archive's rule leaves them out.
        write(&o.join("include/generated/autoconf.h"), "new\n").unwrap();
        write(&o.join("include/config/auto.conf"), "new\n").unwrap();
        write(&o.join("include/generated/rustc_cfg"), "new\n").unwrap();
        assert_eq!(rewritten_archived(o, since).unwrap(), Vec::<String>::new());
        // What arm64's vDSO did with CONFIG_DEFAULT_HOSTNAME changed.
        write(&o.join("arch/arm64/include/generated/vdso-offsets.h"), "new\n").unwrap();
        let files = rewritten_archived(o, since).unwrap();
        assert_eq!(files, ["arch/arm64/include/generated/vdso-offsets.h"]);
        assert!(matches!(config_step_inconclusive(&files), Verdict::Error(e) if e.contains("vdso-offsets.h")));
    }

    #[test]
    fn probe_checks_read_the_unpacked_tree() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(probe_is(d.path(), None).unwrap(), Verdict::Pass);
        write(&d.path().join(PROBE), "#define KHTEST_PROBE 2\n").unwrap();
        assert_eq!(probe_is(d.path(), Some("2")).unwrap(), Verdict::Pass);
        assert!(matches!(probe_is(d.path(), Some("1")).unwrap(), Verdict::Fail(_)));
        assert!(matches!(probe_is(d.path(), None).unwrap(), Verdict::Fail(_)));
    }
}
