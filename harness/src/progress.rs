//! Progress on long work: each phase's start as a line, and while a long
//! step runs (a kernel build, unpacking the source), a status: on a
//! terminal a live line, rewritten every second; in logs and CI a plain
//! line at least every 30 s, so that a silent wait is never long.
//!
//! Producers send a status as a message starting with [`STATUS`];
//! everything else is a line of its own.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The first character of a status message.
pub const STATUS: char = '\r';

/// How often a status is printed where no live line can be drawn.
pub const PLAIN_EVERY: Duration = Duration::from_secs(30);

/// Prints progress to stderr, stamped with the time since it was made.
pub struct Printer {
    start: Instant,
    terminal: bool,
    /// Bold stamps: only on a terminal that wants colour.
    colour: bool,
    state: Mutex<State>,
}

struct State {
    /// When the last plain line was printed.
    last_line: Instant,
    /// A live line is on the screen and must be cleared first.
    live: bool,
}

impl Printer {
    pub fn new(terminal: bool, colour: bool) -> Printer {
        Printer { start: Instant::now(), terminal, colour: terminal && colour, state: Mutex::new(State { last_line: Instant::now(), live: false }) }
    }

    /// What to print for `msg`, if anything now: the text, and whether it
    /// is a live line (no newline).
    pub fn render(&self, msg: &str) -> Option<(String, bool)> {
        let t = self.start.elapsed().as_secs();
        let stamp = format!("[{:3}:{:02}]", t / 60, t % 60);
        let mut st = self.state.lock().unwrap();
        let clear = if std::mem::take(&mut st.live) { "\r\x1b[K" } else { "" };
        match msg.strip_prefix(STATUS) {
            Some(status) if self.terminal => {
                st.live = true;
                Some((format!("\r\x1b[K{stamp} {status}"), true))
            }
            Some(_) if st.last_line.elapsed() < PLAIN_EVERY => None,
            Some(status) => {
                st.last_line = Instant::now();
                Some((format!("{stamp} {status}"), false))
            }
            None => {
                st.last_line = Instant::now();
                let line = match (self.terminal, self.colour) {
                    (true, true) => format!("{clear}\x1b[1m{stamp}\x1b[0m {msg}"),
                    (true, false) => format!("{clear}{stamp} {msg}"),
                    (false, _) => format!("{stamp} {msg}"),
                };
                Some((line, false))
            }
        }
    }

    /// Clear the live line, if one is drawn, before other output.
    pub fn end_live_line(&self) {
        if std::mem::take(&mut self.state.lock().unwrap().live) {
            eprint!("\r\x1b[K");
        }
    }

    pub fn print(&self, msg: &str) {
        match self.render(msg) {
            Some((text, true)) => eprint!("{text}"),
            Some((text, false)) => eprintln!("{text}"),
            None => {}
        }
    }
}

/// `m:ss`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// A status for a step that has done `done` of about `expected` units
/// (from the last time it ran) in `elapsed`.
pub fn status(what: &str, done: u64, expected: Option<u64>, unit: &str, elapsed: Duration) -> String {
    match expected.filter(|&e| e > 0) {
        Some(e) if done > 0 && done < e => {
            let left = elapsed.mul_f64((e - done) as f64 / done as f64);
            format!("{STATUS}{what}: {}% ({done} of about {e} {unit}), {}, about {} left", done * 100 / e, clock(elapsed), clock(left))
        }
        Some(e) => format!("{STATUS}{what}: {done} {unit} (about {e} last time), {}", clock(elapsed)),
        None => format!("{STATUS}{what}: {done} {unit}, {} (no earlier run to compare)", clock(elapsed)),
    }
}

/// kbuild's steps (`  CC      kernel/fork.o`) in a growing log, counted
/// from where the counter was made.
pub struct KbuildSteps {
    log: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    pub done: u64,
}

impl KbuildSteps {
    /// Count what is written to `log` from now on.
    pub fn from_end_of(log: &Path) -> KbuildSteps {
        let offset = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        KbuildSteps { log: log.to_owned(), offset, partial: Vec::new(), done: 0 }
    }

    /// Read what the log got since the last call.
    pub fn update(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.log) else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else { return };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_nl) = self.partial.iter().rposition(|&b| b == b'\n') else { return };
        let lines: Vec<u8> = self.partial.drain(..=last_nl).collect();
        self.done += String::from_utf8_lossy(&lines).lines().filter(|l| is_kbuild_step(l)).count() as u64;
    }
}

/// A kbuild quiet-mode line: two spaces, a short upper-case tag, spaces,
/// a target (`  CC [M]  net/foo.o`, `  LD      vmlinux`).
pub fn is_kbuild_step(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("  ") else { return false };
    let tag: String = rest.chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
    (2..=8).contains(&tag.len()) && rest[tag.len()..].starts_with(' ') && !rest[tag.len()..].trim().is_empty()
}

/// What a step measured the last time it ran (kbuild steps, seconds),
/// kept in the cache to estimate the next run.
pub struct Estimates {
    dir: PathBuf,
}

impl Estimates {
    pub fn in_cache(cache_root: &Path) -> Estimates {
        Estimates { dir: cache_root.join("estimates") }
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        std::fs::read_to_string(self.dir.join(name)).ok()?.trim().parse().ok()
    }

    /// Best effort: an estimate that cannot be written is only a worse
    /// estimate next time.
    pub fn set(&self, name: &str, value: u64) {
        let _ = std::fs::create_dir_all(&self.dir);
        let tmp = self.dir.join(format!("{name}.tmp"));
        if std::fs::write(&tmp, format!("{value}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, self.dir.join(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbuild_steps_are_counted_as_the_log_grows() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("build.log");
        std::fs::write(&log, "  CC      old.o\n").unwrap();
        let mut steps = KbuildSteps::from_end_of(&log);
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        use std::io::Write;
        write!(f, "make[1]: Entering directory '/b'\n  CC      kernel/fork.o\n  CC [M]  net/a.o\n  LD    ").unwrap();
        steps.update();
        assert_eq!(steps.done, 2, "the half-written line is not counted yet");
        writeln!(f, "  vmlinux\n  GEN     Makefile\n  SYNC    include/config/auto.conf\nfoo.c:1:1: warning: x\n    CC not a step").unwrap();
        steps.update();
        assert_eq!(steps.done, 5);
    }

    #[test]
    fn statuses_say_how_far_and_how_long() {
        let s = status("build", 500, Some(2000), "kbuild steps", Duration::from_secs(60));
        assert_eq!(s, "\rbuild: 25% (500 of about 2000 kbuild steps), 1:00, about 3:00 left");
        let s = status("build", 2100, Some(2000), "kbuild steps", Duration::from_secs(90));
        assert_eq!(s, "\rbuild: 2100 kbuild steps (about 2000 last time), 1:30");
        assert!(status("build", 3, None, "kbuild steps", Duration::from_secs(5)).ends_with("(no earlier run to compare)"));
    }

    #[test]
    fn off_a_terminal_a_status_is_a_line_every_30_s_and_on_one_a_live_line() {
        let plain = Printer::new(false, true);
        assert_eq!(plain.render("x86_64-y-o: build").map(|(_, live)| live), Some(false));
        assert!(plain.render("\rbuild: 1%").is_none(), "no status line until 30 s after the last line");
        plain.state.lock().unwrap().last_line -= PLAIN_EVERY;
        let (text, live) = plain.render("\rbuild: 40%").unwrap();
        assert!(!live && text.ends_with("build: 40%") && !text.contains('\r'), "{text:?}");
        assert!(plain.render("\rbuild: 41%").is_none());

        let tty = Printer::new(true, true);
        let (text, live) = tty.render("\rbuild: 1%").unwrap();
        assert!(live && text.starts_with("\r\x1b[K") && text.ends_with("build: 1%"));
        let (text, live) = tty.render("x86_64-y-o: rebuild").unwrap();
        assert!(!live && text.starts_with("\r\x1b[K"), "the live line is cleared first: {text:?}");
        assert!(text.contains("\x1b[1m"), "bold stamps on a terminal: {text:?}");
        let (text, _) = plain.render("x86_64-y-o: load").unwrap();
        assert!(!text.contains('\x1b'), "no escape codes off a terminal: {text:?}");
        let no_colour = Printer::new(true, false);
        let (text, _) = no_colour.render("x86_64-y-o: load").unwrap();
        assert!(!text.contains("\x1b[1m"), "NO_COLOR: no bold: {text:?}");
    }

    #[test]
    fn estimates_are_remembered() {
        let d = tempfile::tempdir().unwrap();
        let e = Estimates::in_cache(d.path());
        assert_eq!(e.get("x86_64-y-o.steps"), None);
        e.set("x86_64-y-o.steps", 2345);
        assert_eq!(e.get("x86_64-y-o.steps"), Some(2345));
    }
}
