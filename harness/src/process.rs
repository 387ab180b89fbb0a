//! Running host commands: output to a log file, a time limit, and the whole
//! process group ended on timeout or on SIGINT/SIGTERM/SIGHUP, so that no
//! make or QEMU child outlives khtest.
//!
//! Every child runs in its own process group (a timeout can then end make
//! and all its compilers at once) and is registered here while it runs;
//! [`stop_children_on_signals`] ends every registered group before khtest
//! exits. Children also get `PR_SET_PDEATHSIG`, in case khtest is killed
//! with SIGKILL.
//!
//! Ctrl-Z stops them too: SIGTSTP is passed on to every running group
//! before khtest stops itself, and SIGCONT after it is continued, as
//! nextest does. A [`Deadline`] does not count the time khtest was stopped.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Process groups of the children now running.
static RUNNING: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// The signal that interrupted khtest, or 0.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// Nanoseconds khtest has spent stopped (Ctrl-Z) since it started.
static STOPPED_NANOS: AtomicU64 = AtomicU64::new(0);

fn stopped() -> Duration {
    Duration::from_nanos(STOPPED_NANOS.load(Ordering::SeqCst))
}

/// A point in time `limit` from now, moved later by any time khtest spends
/// stopped meanwhile: a make suspended with Ctrl-Z for an hour has not run
/// for an hour.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    stopped_before: Duration,
}

impl Deadline {
    pub fn after(limit: Duration) -> Deadline {
        Deadline { at: Instant::now() + limit, stopped_before: stopped() }
    }

    /// What is left of it (zero once it has passed).
    pub fn left(&self) -> Duration {
        (self.at + stopped().saturating_sub(self.stopped_before)).saturating_duration_since(Instant::now())
    }

    pub fn passed(&self) -> bool {
        self.left().is_zero()
    }
}

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
    use signal_hook::consts::{SIGCONT, SIGHUP, SIGINT, SIGTERM, SIGTSTP};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGTSTP, SIGCONT])?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            match sig {
                SIGTSTP => stop_with_children(),
                SIGCONT => signal_groups(SIGCONT),
                _ => end_children_and_exit(sig),
            }
        }
    });
    Ok(())
}

/// Signal every running child's process group.
fn signal_groups(sig: i32) {
    for g in RUNNING.lock().unwrap().iter() {
        // SAFETY: signalling process groups khtest created; one that is
        // gone already is fine.
        unsafe { libc::kill(-g, sig) };
    }
}

/// Ctrl-Z: stop the children (in process groups of their own, the
/// terminal does not), then khtest itself, as the default action would.
fn stop_with_children() {
    signal_groups(libc::SIGTSTP);
    let t = Instant::now();
    // Returns once khtest is continued (SIGCONT, handled after this).
    let _ = signal_hook::low_level::emulate_default_handler(libc::SIGTSTP);
    STOPPED_NANOS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::SeqCst);
    signal_groups(libc::SIGCONT);
}

/// SIGINT, SIGTERM, SIGHUP: note the signal, end every child's group
/// (SIGTERM, then SIGKILL), and exit with 128 + the signal if the main
/// thread has not reported and exited first.
fn end_children_and_exit(sig: i32) {
    INTERRUPTED.store(sig, Ordering::SeqCst);
    let groups = RUNNING.lock().unwrap().len();
    eprintln!("khtest: interrupted (signal {sig}): ending {groups} child process group(s)");
    signal_groups(libc::SIGTERM);
    // A stopped group would not act on SIGTERM until continued.
    signal_groups(libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(2));
    signal_groups(libc::SIGKILL);
    std::thread::sleep(Duration::from_secs(10));
    std::process::exit(128 + sig);
}

/// Run `cmd` with stdout and stderr appended to `log`. Fails if it cannot
/// start or runs longer than `limit`; a non-zero exit is returned, not failed.
pub fn run_logged(cmd: &mut Command, log: &Path, limit: Duration) -> Result<ExitStatus> {
    run_logged_ticking(cmd, log, limit, &mut || {})
}

/// [`run_logged`], calling `tick` about once a second while `cmd` runs
/// (to report progress).
pub fn run_logged_ticking(cmd: &mut Command, log: &Path, limit: Duration, tick: &mut dyn FnMut()) -> Result<ExitStatus> {
    let out = OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("cannot write the log {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let child = spawn_group(cmd).with_context(|| format!("cannot start {}", describe(cmd)))?;
    wait_ticking(child, limit, tick).with_context(|| format!("{} (log: {})", describe(cmd), log.display()))
}

/// The deadline of a short tool run (`--version`, a listing).
pub const TOOL_LIMIT: Duration = Duration::from_secs(60);

/// Run `cmd` to its end in a process group of its own, with its output
/// captured, ending the group if it runs past `limit`.
pub fn output_limited(cmd: &mut Command, limit: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn_group(cmd).with_context(|| format!("cannot start {}", describe(cmd)))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    // On a timeout the whole group is killed, which closes the pipes.
    let status = wait_limited(child, limit).with_context(|| describe(cmd))?;
    Ok(Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
}

/// Wait for `child`, ending its process group if it runs past `limit`.
pub fn wait_limited(child: Child, limit: Duration) -> Result<ExitStatus> {
    wait_ticking(child, limit, &mut || {})
}

fn wait_ticking(mut child: Child, limit: Duration, tick: &mut dyn FnMut()) -> Result<ExitStatus> {
    let deadline = Deadline::after(limit);
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    loop {
        if Instant::now() >= next_tick {
            tick();
            next_tick = Instant::now() + Duration::from_secs(1);
        }
        if let Some(status) = child.try_wait()? {
            forget(&child);
            return Ok(status);
        }
        if deadline.passed() {
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
    last_lines(&String::from_utf8_lossy(&buf), n).join("\n")
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
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
    fn a_deadline_does_not_count_time_stopped() {
        let d = Deadline::after(Duration::from_millis(100));
        assert!(!d.passed());
        // As the Ctrl-Z handler records a stop (other deadlines running
        // in this process only get later).
        STOPPED_NANOS.fetch_add(Duration::from_secs(60).as_nanos() as u64, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(150));
        assert!(!d.passed() && d.left() > Duration::from_secs(59), "{:?}", d.left());
        assert!(Deadline::after(Duration::ZERO).passed(), "a deadline made after the stop does not get its time");
    }

    #[test]
    fn output_is_captured_and_a_hang_ends_at_the_deadline() {
        let o = output_limited(Command::new("sh").args(["-c", "echo out; echo err >&2"]), Duration::from_secs(10)).unwrap();
        assert_eq!((o.stdout, o.stderr), (b"out\n".to_vec(), b"err\n".to_vec()));
        let t = Instant::now();
        let e = output_limited(Command::new("sh").args(["-c", "sleep 30 & sleep 30"]), Duration::from_millis(300)).unwrap_err();
        assert!(format!("{e:#}").contains("timed out"), "{e:#}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_long_command_ticks_about_once_a_second() {
        let d = tempfile::tempdir().unwrap();
        let mut ticks = 0;
        run_logged_ticking(Command::new("sleep").arg("2.5"), &d.path().join("log"), Duration::from_secs(10), &mut || ticks += 1).unwrap();
        assert!((2..=3).contains(&ticks), "{ticks} ticks in 2.5 s");
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
