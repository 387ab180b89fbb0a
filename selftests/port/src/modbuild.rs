//! Building the test module against an unpacked archive, the way the
//! archive's documentation tells a user to: `make -C <dir> M=<module> modules`.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The outcome of one module build.
#[derive(Debug, Clone)]
pub struct ModBuild {
    /// make exited 0 and the `.ko` exists.
    pub ok: bool,
    pub ko: Option<PathBuf>,
    pub log: PathBuf,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    pub command: String,
}

/// Copy `module_src` to `work/<name>` and build it against `headers`.
/// `make_vars` are extra `VAR=value` arguments (`ARCH=`, `CROSS_COMPILE=`);
/// the recipe itself needs none. `run` runs make with its output in `log`
/// (e.g. [`run_with_deadline`]) and fails if make cannot start or hangs.
pub fn build_module(
    headers: &Path,
    module_src: &Path,
    work: &Path,
    make_vars: &[String],
    log: &Path,
    run: impl FnOnce(&mut Command, &Path) -> Result<ExitStatus>,
) -> Result<ModBuild> {
    let name = module_src.file_name().context("module source has no name")?;
    let module = work.join(name);
    if module.exists() {
        std::fs::remove_dir_all(&module).with_context(|| format!("removing {}", module.display()))?;
    }
    copy_dir(module_src, &module)?;
    let headers = std::path::absolute(headers)?;
    let module = std::path::absolute(&module)?;

    let mut cmd = Command::new("make");
    cmd.arg("-C").arg(&headers).arg(format!("M={}", module.display()));
    cmd.args(make_vars).arg("modules");
    let command = format!("{cmd:?}").replace('"', "");
    let status = run(&mut cmd, log)?;

    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (warnings, errors) = classify(&text);
    let ko = find_ko(&module);
    Ok(ModBuild { ok: status.success() && ko.is_some(), ko, log: log.to_owned(), warnings, errors, command })
}

/// Run `cmd` with its output in a new `log`, in a process group of its own
/// (so that a hung compiler goes with make), and end the group at `limit`,
/// or at once when SIGINT or SIGTERM was caught ([`crate::signals`]).
pub fn run_with_deadline(limit: Duration) -> impl FnOnce(&mut Command, &Path) -> Result<ExitStatus> {
    move |cmd, log| {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
        let mut child = cmd.spawn().with_context(|| format!("cannot run {:?} (Debian package: make)", cmd.get_program()))?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            let interrupted = crate::signals::caught();
            if interrupted.is_some() || Instant::now() >= deadline {
                // SAFETY: kill(2) of the process group the child leads.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                if let Some(sig) = interrupted {
                    bail!("`make` ended: the port caught signal {sig} (log: {})", log.display());
                }
                bail!("`make` timed out after {} s (log: {})", limit.as_secs(), log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Split kbuild output into warning and error lines.
pub fn classify(log: &str) -> (Vec<String>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for line in log.lines() {
        let lower = line.to_ascii_lowercase();
        if lower.contains("error:") || lower.starts_with("error ") || lower.contains("*** ") {
            errors.push(line.to_owned());
        } else if lower.contains("warning:") || line.starts_with("WARNING") {
            warnings.push(line.to_owned());
        }
    }
    (warnings, errors)
}

fn find_ko(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).find(|p| p.extension().is_some_and(|e| e == "ko"))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry?;
        let rel = entry.path().strip_prefix(from)?;
        let dst = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dst)?;
        } else {
            std::fs::copy(entry.path(), &dst).with_context(|| format!("copying {} to {}", entry.path().display(), dst.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_make_ends_at_its_deadline_with_its_children() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let pid = d.path().join("pid");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!("echo started; sleep 30 & echo $! > {}; wait", pid.display()));
        let t = Instant::now();
        let e = run_with_deadline(Duration::from_millis(500))(&mut cmd, &log).unwrap_err();
        assert!(format!("{e:#}").contains("timed out after 0 s"), "{e:#}");
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "started\n");
        std::thread::sleep(Duration::from_millis(200));
        let pid = std::fs::read_to_string(&pid).unwrap();
        let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "sleep still running: {state}");
        let ok = run_with_deadline(Duration::from_secs(10))(Command::new("true").arg("x"), &log).unwrap();
        assert!(ok.success());
    }

    #[test]
    fn modpost_warnings_are_warnings_and_make_errors_are_errors() {
        let log = "\
  CC [M]  /t/test.o
WARNING: Module.symvers is missing.
WARNING: modpost: \"_printk\" [/t/test.ko] undefined!
/t/test.c:3:1: warning: unused variable 'x'
/t/test.c:9:2: error: expected ';' before '}' token
make[2]: *** [scripts/Makefile.build:229: /t/test.o] Error 1
ERROR: modpost: \"_printk\" [/t/test.ko] undefined!
";
        let (w, e) = classify(log);
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(e.len(), 3, "{e:?}");
    }
}
