//! Running host commands: output to a log file, a time limit, and the whole
//! process group ended on timeout or on SIGINT/SIGTERM/SIGHUP, so that no
//! make or QEMU child outlives khtest.
//!
//! Every child runs in its own process group (a timeout can then end make
//! and all its compilers at once) and is registered here while it runs;
//! [`stop_children_on_signals`] ends every registered group before khtest
//! exits. Children also get `PR_SET_PDEATHSIG`, in case khtest is killed
//! with SIGKILL.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Process groups of the children now running.
static RUNNING: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// The signal that interrupted khtest, or 0.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// The signal that interrupted this run, if one did.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// Start `cmd` in a new process group that khtest ends if it is interrupted.
pub fn spawn_group(cmd: &mut Command) -> std::io::Result<Child> {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; it only sets this child's own
    // parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut running = RUNNING.lock().unwrap();
    let child = cmd.spawn()?;
    running.push(child.id() as libc::pid_t);
    Ok(child)
}

/// `child` has been waited for: stop tracking its group.
pub fn forget(child: &Child) {
    let pid = child.id() as libc::pid_t;
    RUNNING.lock().unwrap().retain(|p| *p != pid);
}

/// On SIGINT, SIGTERM or SIGHUP: note the signal (the running cell then
/// stops as interrupted, see [`interrupted`]), end every running child's
/// process group, and make sure khtest exits with 128 + the signal even if
/// the main thread is stuck. Call once, early in `main`.
pub fn stop_children_on_signals() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            INTERRUPTED.store(sig, Ordering::SeqCst);
            let groups: Vec<libc::pid_t> = RUNNING.lock().unwrap().clone();
            eprintln!("khtest: interrupted (signal {sig}): ending {} child process group(s)", groups.len());
            for g in &groups {
                // SAFETY: signalling process groups khtest created.
                unsafe { libc::kill(-g, libc::SIGTERM) };
            }
            std::thread::sleep(Duration::from_secs(2));
            for g in &groups {
                // SAFETY: as above; a group that is gone already is fine.
                unsafe { libc::kill(-g, libc::SIGKILL) };
            }
            // The main thread normally reports and exits first.
            std::thread::sleep(Duration::from_secs(10));
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

/// Run `cmd` with stdout and stderr appended to `log`. Fails if it cannot
/// start or runs longer than `limit`; a non-zero exit is returned, not failed.
pub fn run_logged(cmd: &mut Command, log: &Path, limit: Duration) -> Result<ExitStatus> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot write the log {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let child = spawn_group(cmd).with_context(|| format!("cannot start {}", describe(cmd)))?;
    wait_limited(child, limit).with_context(|| format!("{} (log: {})", describe(cmd), log.display()))
}

/// Wait for `child`, ending its process group if it runs past `limit`.
pub fn wait_limited(mut child: Child, limit: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            forget(&child);
            return Ok(status);
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            bail!("timed out after {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM the child's process group, then SIGKILL it if still there.
pub fn kill_group(child: &mut Child) {
    let pgid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a negative pid signals that process group only.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above; the group may already be gone, which is fine.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    forget(child);
}

/// A command line a person can paste.
pub fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s += &format!("{}={} ", k.to_string_lossy(), v.to_string_lossy());
        }
    }
    s += &cmd.get_program().to_string_lossy();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            s += &format!(" '{a}'");
        } else {
            s += &format!(" {a}");
        }
    }
    s
}

/// The last `n` lines of a file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_output_and_returns_status() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let st = run_logged(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), &log, Duration::from_secs(10)).unwrap();
        assert_eq!(st.code(), Some(3));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out") && text.contains("err"));
        assert_eq!(tail(&log, 1), "err");
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let pidfile = d.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let e = run_logged(Command::new("sh").args(["-c", &script]), &log, Duration::from_millis(500)).unwrap_err();
        assert!(format!("{e:#}").contains("timed out"), "{e:#}");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // The grandchild was in the group and must be gone (or a zombie being reaped).
        std::thread::sleep(Duration::from_millis(200));
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "sleep still running: {state}");
    }
}
