//! kbuild: configure (the cell's base, `tinyconfig` unless it says
//! otherwise, then its fragments, then `olddefconfig`), verify every
//! requested option stuck, and build.
//!
//! A build directory is reused across runs; it is configured again only when
//! what the cell asks for changes, so a rerun with nothing changed is a no-op
//! `make` and the kheaders archive is not regenerated.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::buildlog::{self, Failure};
use crate::matrix::{Arch, Base, BuildKind, Cell, Kheaders, Matrix, Toolchain};
use crate::process::{run_logged_ticking, tail};
use crate::progress::{self, KbuildSteps};

/// A `.config` as symbol → value (`y`, `m`, `n`, a number or a quoted string).
pub type Config = BTreeMap<String, String>;

/// Where and how one kernel is built.
#[derive(Debug, Clone)]
pub struct Build {
    pub arch: Arch,
    pub toolchain: Toolchain,
    /// The source tree.
    pub src: PathBuf,
    /// The object tree: `O=` for out-of-tree builds, else `src` itself.
    pub obj: PathBuf,
    pub kind: BuildKind,
    /// Compile through ccache with this cache directory.
    pub ccache: Option<PathBuf>,
}

/// Requested options that the final `.config` does not have.
#[derive(Debug, thiserror::Error)]
#[error("requested Kconfig options did not stick ({}):\n  {}", .config.display(), .options.join("\n  "))]
pub struct NotStuck {
    pub config: PathBuf,
    pub options: Vec<String>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub kernel_image: PathBuf,
    pub archive: PathBuf,
    /// `kernel/kheaders.ko` when kheaders is a module.
    pub kheaders_ko: Option<PathBuf>,
    /// How many steps (`  CC  ...` lines) kbuild took.
    pub steps: u64,
}

/// Parse `.config` text. `# CONFIG_X is not set` reads as `n`.
pub fn parse_config(text: &str) -> Config {
    let mut c = Config::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(sym) = rest.strip_suffix(" is not set") {
                c.insert(format!("CONFIG_{sym}"), "n".into());
            }
        } else if let Some((k, v)) = line.split_once('=') {
            if k.starts_with("CONFIG_") {
                c.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    c
}

/// What `cell` asks of Kconfig: its fragments in order, then its kheaders
/// options (which win).
pub fn requested(cell: &Cell, fragments: &[PathBuf]) -> Result<Config> {
    let mut want = Config::new();
    for f in fragments {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read the fragment {}", f.display()))?;
        for (lineno, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || (t.starts_with('#') && !t.ends_with(" is not set")) {
                continue;
            }
            let one = parse_config(t);
            if one.is_empty() {
                bail!("{}:{}: not a Kconfig assignment: {line:?}", f.display(), lineno + 1);
            }
            want.extend(one);
        }
    }
    let kh = match cell.kheaders {
        Kheaders::BuiltIn => "y",
        Kheaders::Module => "m",
    };
    want.insert("CONFIG_IKHEADERS".into(), kh.into());
    if cell.patched {
        let mb = if cell.modbuild { "y" } else { "n" };
        want.insert("CONFIG_IKHEADERS_MODBUILD".into(), mb.into());
        want.insert("CONFIG_IKHEADERS_PROC".into(), if cell.proc { "y" } else { "n" }.into());
    }
    Ok(want)
}

/// Where a configuration starts, before the requested options go on top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A kbuild target that writes `.config` (`tinyconfig`, `defconfig`).
    Target(String),
    /// A whole `.config`, read from `name`.
    Config { name: String, text: String },
}

/// Everything a build asks of Kconfig.
#[derive(Debug, Clone)]
pub struct Request {
    pub start: Start,
    pub options: Config,
}

impl Request {
    /// The text that identifies the request, in the build key and in the
    /// object tree's record of how it was configured. A `tinyconfig` start
    /// adds nothing to the options, so keys made before `base` existed hold.
    pub fn text(&self) -> String {
        let options = merge("", &self.options);
        match &self.start {
            Start::Target(t) if Base::Target(t.clone()) == Base::default() => options,
            Start::Target(t) => format!("# khtest base: make {t}\n{options}"),
            Start::Config { name, text } => format!("# khtest base: {name}\n{text}{options}"),
        }
    }
}

/// What `cell` of `matrix` asks of Kconfig: its base, read if it is a
/// file, and [`requested`].
pub fn request(matrix: &Matrix, cell: &Cell) -> Result<Request> {
    let start = match &cell.base {
        Base::Target(t) => Start::Target(t.clone()),
        Base::File(f) => {
            let path = matrix.config_dir().join(f);
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read the base {}", path.display()))?;
            Start::Config { name: f.clone(), text }
        }
    };
    Ok(Request { start, options: requested(cell, &matrix.fragment_paths(cell))? })
}

/// Requested options whose final value differs, as readable lines.
pub fn verify(want: &Config, got: &Config) -> Vec<String> {
    want.iter()
        .filter_map(|(k, v)| {
            let have = got.get(k).map(String::as_str).unwrap_or("n");
            (have != v).then(|| {
                let have = if got.contains_key(k) { have.to_owned() } else { "absent (its dependencies are not met)".into() };
                format!("{k}={v} requested, final .config has {have}")
            })
        })
        .collect()
}

/// The `.config` text: `base` with every symbol of `want` replaced.
pub fn merge(base: &str, want: &Config) -> String {
    let mut out: String = base
        .lines()
        .filter(|l| {
            let c = parse_config(l);
            c.keys().next().is_none_or(|k| !want.contains_key(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str("# khtest: the cell's fragments and options\n");
    for (k, v) in want {
        if v == "n" {
            out.push_str(&format!("# {k} is not set\n"));
        } else {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out
}

/// The `KBUILD_BUILD_TIMESTAMP` of every build, and its Unix time: archive
/// entries carry it.
pub const BUILD_TIMESTAMP: (&str, u64) = ("Sun Nov 17 00:00:00 UTC 2024", 1_731_801_600);

/// What the RANDSTRUCT probe asks for: gcc has no randstruct of its own.
pub const RANDSTRUCT_ASK: &str = "CONFIG_GCC_PLUGINS=y\n# CONFIG_RANDSTRUCT_NONE is not set\nCONFIG_RANDSTRUCT_FULL=y\n";

/// Make jobs: one more than the cores, as kbuild users usually do.
pub fn jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) + 1
}

impl Build {
    /// `make` with the arch, cross compiler and object tree of this build,
    /// and fixed build identity so that rebuilds are reproducible.
    pub fn make(&self) -> Command {
        let mut cmd = Command::new("make");
        cmd.arg("-C").arg(&self.src);
        if self.kind == BuildKind::OutOfTree {
            cmd.arg(format!("O={}", self.obj.display()));
        }
        cmd.arg(format!("ARCH={}", self.arch.kernel_arch()));
        for (var, value) in self.toolchain.make_vars(self.arch) {
            cmd.arg(format!("{var}={value}"));
        }
        // As tuxmake's ccache wrapper does. `$(CC) --version` still names
        // the compiler, so CONFIG_CC_VERSION_TEXT does not change.
        if let Some(dir) = &self.ccache {
            let (cc, hostcc) = (self.toolchain.cc(self.arch), self.toolchain.hostcc());
            cmd.arg(format!("CC=ccache {cc}")).arg(format!("HOSTCC=ccache {hostcc}")).env("CCACHE_DIR", dir);
            // With debug information (BTF needs it) ccache would hash the
            // object tree's path, and every new tree would compile afresh;
            // only DW_AT_comp_dir can then name another tree.
            cmd.env("CCACHE_NOHASHDIR", "1");
        }
        cmd.env("KBUILD_BUILD_USER", "khtest").env("KBUILD_BUILD_HOST", "khtest").env("KBUILD_BUILD_TIMESTAMP", BUILD_TIMESTAMP.0);
        cmd
    }

    fn config_path(&self) -> PathBuf {
        self.obj.join(".config")
    }

    /// Configure unless the object tree already holds a `.config` made from
    /// exactly `request`; then check every requested option. Returns the
    /// final `.config`.
    pub fn configure(&self, request: &Request, log: &Path) -> Result<Config> {
        let stamp = self.obj.join(".khtest-requested");
        let want_text = request.text();
        let current = std::fs::read_to_string(&stamp).ok();
        if current.as_deref() != Some(&want_text) || !self.config_path().exists() {
            std::fs::create_dir_all(&self.obj).with_context(|| format!("cannot create {}", self.obj.display()))?;
            let _ = std::fs::remove_file(&stamp);
            match &request.start {
                Start::Target(t) => self.make_target(&[t], log, Duration::from_secs(300))?,
                Start::Config { text, .. } => std::fs::write(self.config_path(), text)?,
            }
            let base = std::fs::read_to_string(self.config_path())?;
            std::fs::write(self.config_path(), merge(&base, &request.options))?;
            self.make_target(&["olddefconfig"], log, Duration::from_secs(300))?;
            std::fs::write(&stamp, &want_text)?;
        }
        let got = parse_config(&std::fs::read_to_string(self.config_path())?);
        let bad = verify(&request.options, &got);
        if !bad.is_empty() {
            return Err(NotStuck { config: self.config_path(), options: bad }.into());
        }
        Ok(got)
    }

    /// The configuration `olddefconfig` makes of this build's `.config`
    /// with RANDSTRUCT asked for (through GCC plugins), in a file of its
    /// own (`KCONFIG_CONFIG`): the build's `.config` is left alone.
    pub fn randstruct_probe(&self, log: &Path) -> Result<Config> {
        let probe = self.obj.join(".config.khtest-randstruct");
        let ask = parse_config(RANDSTRUCT_ASK);
        std::fs::write(&probe, merge(&std::fs::read_to_string(self.config_path())?, &ask))?;
        let mut cmd = self.make();
        cmd.arg(format!("KCONFIG_CONFIG={}", probe.display()));
        self.run_make(cmd, &["olddefconfig"], log, Duration::from_secs(300), &mut || {})?;
        Ok(parse_config(&std::fs::read_to_string(&probe)?))
    }

    /// `touch .config`: newer than the configuration kbuild derived from
    /// it, its bytes unchanged, so the next make runs syncconfig.
    pub fn touch_config(&self) -> Result<()> {
        let path = self.config_path();
        let file = std::fs::File::options().append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        file.set_modified(std::time::SystemTime::now()).with_context(|| format!("cannot touch {}", path.display()))
    }

    /// The headers archive the build makes.
    pub fn archive(&self) -> PathBuf {
        self.obj.join("kernel/kheaders_data.tar.xz")
    }

    /// The kernel image QEMU boots.
    pub fn kernel_image(&self) -> PathBuf {
        self.obj.join(self.arch.facts().kernel_image)
    }

    /// `make` the kernel (and modules); the log gets all output.
    /// `progress` gets a status every second, against `expected` steps
    /// (the last build's count), if known.
    pub fn build(&self, config: &Config, log: &Path, limit: Duration, progress: &dyn Fn(&str), expected: Option<u64>) -> Result<Artifacts> {
        let mut steps = KbuildSteps::from_end_of(log);
        let start = std::time::Instant::now();
        let mut tick = || {
            steps.update();
            progress(&progress::status("build", steps.done, expected, "kbuild steps", start.elapsed()));
        };
        self.run_make(self.make(), &[&format!("-j{}", jobs())], log, limit, &mut tick)?;
        steps.update();
        let module = config.get("CONFIG_IKHEADERS").is_some_and(|v| v == "m");
        let a = Artifacts {
            kernel_image: self.kernel_image(),
            archive: self.archive(),
            kheaders_ko: module.then(|| self.obj.join("kernel/kheaders.ko")),
            steps: steps.done,
        };
        for p in [Some(&a.kernel_image), Some(&a.archive), a.kheaders_ko.as_ref()].into_iter().flatten() {
            if !p.is_file() {
                bail!("the build finished but {} is missing (log: {})", p.display(), log.display());
            }
        }
        Ok(a)
    }

    /// `make mrproper`: remove every generated file and the config.
    pub fn mrproper(&self, log: &Path) -> Result<()> {
        self.make_target(&["mrproper"], log, Duration::from_secs(600))
    }

    /// Build again with nothing changed; `log` gets the output.
    pub fn rebuild(&self, log: &Path, limit: Duration) -> Result<()> {
        self.make_target(&[&format!("-j{}", jobs())], log, limit)
    }

    /// Build only the archive and the object that embeds it (after kbuild's
    /// `prepare`), with `timestamp` as `KBUILD_BUILD_TIMESTAMP`.
    pub fn archive_only(&self, timestamp: &str, log: &Path, limit: Duration) -> Result<PathBuf> {
        self.archive_only_with(timestamp, &[], log, limit)
    }

    /// [`Build::archive_only`] with more environment variables.
    pub fn archive_only_with(&self, timestamp: &str, env: &[(&str, &str)], log: &Path, limit: Duration) -> Result<PathBuf> {
        let mut cmd = self.make();
        cmd.env("KBUILD_BUILD_TIMESTAMP", timestamp).envs(env.iter().copied());
        self.run_make(cmd, &[&format!("-j{}", jobs()), "kernel/kheaders.o"], log, limit, &mut || {})?;
        Ok(self.archive())
    }

    fn make_target(&self, args: &[&str], log: &Path, limit: Duration) -> Result<()> {
        self.run_make(self.make(), args, log, limit, &mut || {})
    }

    fn run_make(&self, mut cmd: Command, args: &[&str], log: &Path, limit: Duration, tick: &mut dyn FnMut()) -> Result<()> {
        cmd.args(args);
        let args = args.join(" ");
        // Not starting and running out of time are the host's: errors as they are.
        let status = run_logged_ticking(&mut cmd, log, limit, tick)?;
        if status.success() {
            return Ok(());
        }
        let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let failure = buildlog::first_failure(&text);
        // Killed, or out of space: nothing is known about the tree.
        if let Some(sig) = status.signal() {
            bail!("`make {args}` was killed by signal {sig} (log: {})", log.display());
        }
        if let Some(what) = failure.host_fault {
            bail!("`make {args}` {what} (log: {}):\n{}", log.display(), failure.quote("    ").trim_end());
        }
        let tail = if failure.lines.is_empty() { tail(log, 20) } else { String::new() };
        Err(MakeFailed { args, status, log: log.to_owned(), failure, tail }.into())
    }
}

/// `make` ran to its end and failed: the tree under test (or its
/// configuration) broke the build, not the host.
#[derive(Debug, thiserror::Error)]
pub struct MakeFailed {
    pub args: String,
    pub status: ExitStatus,
    pub log: PathBuf,
    /// What the log says went wrong.
    pub failure: Failure,
    /// The log's last lines, when it names no error.
    pub tail: String,
}

impl std::fmt::Display for MakeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let log = self.log.file_name().unwrap_or_default().to_string_lossy();
        write!(f, "`make {}` failed ({})", self.args, self.status)?;
        match self.failure.line {
            Some(n) if !self.failure.lines.is_empty() => write!(f, "; first errors ({log} line {n}):\n{}", self.failure.quote("    "))?,
            _ => write!(f, "; the log names no error, it ends:\n{}\n", self.tail)?,
        }
        write!(f, "  log: {}", self.log.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Matrix;

    #[test]
    fn the_base_is_in_the_request_and_tinyconfig_keeps_old_keys() {
        let configs = tempfile::tempdir().unwrap();
        let frags = configs.path().join("fragments");
        std::fs::create_dir_all(&frags).unwrap();
        std::fs::write(frags.join("base.config"), "CONFIG_MODULES=y\n").unwrap();
        std::fs::write(configs.path().join("distro.config"), "CONFIG_SMP=y\n").unwrap();
        let m = Matrix::parse(
            "cells:\n  - {name: t, arch: x86_64, kheaders: y, fragments: [base.config]}\n  - {name: d, arch: x86_64, kheaders: y, base: defconfig, fragments: [base.config]}\n  - {name: f, arch: x86_64, kheaders: y, base: distro.config, fragments: [base.config]}\n",
            &frags,
        )
        .unwrap();
        let [t, d, f] = [0, 1, 2].map(|i| request(&m, &m.cells[i]).unwrap());
        assert_eq!(t.text(), merge("", &t.options), "a tinyconfig cell's key is what it was before `base`");
        assert_eq!(d.start, Start::Target("defconfig".into()));
        assert!(d.text().starts_with("# khtest base: make defconfig\n") && d.text().ends_with(&t.text()), "{}", d.text());
        assert_eq!(f.start, Start::Config { name: "distro.config".into(), text: "CONFIG_SMP=y\n".into() });
        assert!(f.text().contains("CONFIG_SMP=y\n"), "the file's text is in the key: {}", f.text());
        assert_eq!(t.options, d.options, "the fragments and kheaders options go on top of any base");
    }

    #[test]
    fn parses_values_and_not_set() {
        let c = parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"x y\"\n# comment\nCONFIG_N=12\n");
        assert_eq!(c["CONFIG_A"], "y");
        assert_eq!(c["CONFIG_B"], "n");
        assert_eq!(c["CONFIG_S"], "\"x y\"");
        assert_eq!(c["CONFIG_N"], "12");
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn verify_names_what_did_not_stick() {
        let want = parse_config("CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=y\n");
        let got = parse_config("CONFIG_A=y\nCONFIG_B=y\n");
        let bad = verify(&want, &got);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].contains("CONFIG_B=m requested, final .config has y"));
        assert!(bad[1].contains("CONFIG_D=y requested") && bad[1].contains("absent"));
        assert!(verify(&want, &parse_config("CONFIG_A=y\nCONFIG_B=m\nCONFIG_D=y\n")).is_empty());
    }

    #[test]
    fn merge_replaces_requested_symbols() {
        let want = parse_config("CONFIG_A=m\n# CONFIG_B is not set\n");
        let out = merge("CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=y\n", &want);
        let c = parse_config(&out);
        assert_eq!((c["CONFIG_A"].as_str(), c["CONFIG_B"].as_str(), c["CONFIG_C"].as_str()), ("m", "n", "y"));
        assert_eq!(out.matches("CONFIG_A").count(), 1);
    }

    #[test]
    fn requested_adds_the_cells_kheaders_options_and_rejects_junk() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f.config"), "# a comment\nCONFIG_MODULES=y\n# CONFIG_X is not set\n").unwrap();
        let m = Matrix::parse("cells:\n  - {name: a, arch: x86_64, kheaders: m, fragments: [f.config]}\n", d.path()).unwrap();
        let w = requested(&m.cells[0], &m.fragment_paths(&m.cells[0])).unwrap();
        assert_eq!(w["CONFIG_MODULES"], "y");
        assert_eq!(w["CONFIG_X"], "n");
        assert_eq!(w["CONFIG_IKHEADERS"], "m");
        assert_eq!(w["CONFIG_IKHEADERS_MODBUILD"], "y");
        assert_eq!(w["CONFIG_IKHEADERS_PROC"], "y", "patched cells serve /proc/kheaders.tar.xz unless `proc: false`");
        std::fs::write(d.path().join("f.config"), "CONFIG_MODULES=y\nmodules please\n").unwrap();
        let e = requested(&m.cells[0], &m.fragment_paths(&m.cells[0])).unwrap_err().to_string();
        assert!(e.contains("f.config:2: not a Kconfig assignment"), "{e}");
    }
}
