//! The guest's serial console, over any byte streams: what it printed
//! (kept, and copied to a log), waits with a deadline each, a watch for a
//! kernel crash that ends any wait at once, and the command protocol of
//! `images/init`: the host sends `SEQ COMMAND`, the guest answers
//! `KHTEST-BEGIN SEQ`, the command's output, `KHTEST-DONE SEQ STATUS`.
//!
//! It knows nothing of QEMU: [`crate::vm`] gives it QEMU's stdio, and the
//! tests a shell script over pipes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::process::Deadline;

/// Lines that mean the guest kernel is dying.
const CRASH_MARKERS: &[&str] = &["Kernel panic - not syncing", "Oops:", "BUG: ", "general protection fault", "Unable to handle kernel"];

pub fn is_crash_line(line: &str) -> bool {
    CRASH_MARKERS.iter().any(|m| line.contains(m))
}

/// What went wrong on the console; [`crate::vm`] adds the phase and QEMU's side.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The kernel panicked or oopsed: the crash line and what followed.
    #[error("the guest kernel crashed:\n{0}")]
    Crash(String),
    #[error("nothing expected came within {} s", .0.as_secs_f64())]
    Timeout(Duration),
    /// The console (or the transfer port) reached its end.
    #[error("the {0} closed")]
    Closed(&'static str),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The guest said something the protocol does not allow.
    #[error("{0}")]
    Protocol(String),
}

/// A command's exit status and what it printed on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub text: String,
}

/// What the console has printed so far.
#[derive(Default)]
struct Text {
    text: String,
    eof: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<Text>,
    more: Condvar,
}

/// A console: `W` is where commands go (QEMU's stdin, a pipe).
pub struct Console<W: Write> {
    input: W,
    shared: Arc<Shared>,
    /// Where the next wait starts reading.
    pos: usize,
    seq: u32,
}

impl<W: Write> Console<W> {
    /// Read `output` on a thread of its own, copying it to `log`, until
    /// its end; commands go to `input`.
    pub fn new(output: impl Read + Send + 'static, log: impl Write + Send + 'static, input: W) -> Console<W> {
        let shared = Arc::new(Shared::default());
        spawn_reader(output, log, shared.clone());
        Console { input, shared, pos: 0, seq: 0 }
    }

    /// The next complete line that `want` accepts; lines before it are
    /// passed over. A crash line ends the wait at once.
    pub fn wait_line(&mut self, limit: Duration, want: impl Fn(&str) -> bool) -> Result<String, ConsoleError> {
        let deadline = Deadline::after(limit);
        let mut st = self.shared.state.lock().unwrap();
        loop {
            while let Some(nl) = st.text[self.pos..].find('\n') {
                let line = st.text[self.pos..self.pos + nl].to_owned();
                if is_crash_line(&line) {
                    drop(st);
                    return Err(ConsoleError::Crash(self.crash_context()));
                }
                self.pos += nl + 1;
                if want(&line) {
                    return Ok(line);
                }
            }
            if st.eof {
                return Err(ConsoleError::Closed("console"));
            }
            let left = deadline.left();
            if left.is_zero() {
                return Err(ConsoleError::Timeout(limit));
            }
            st = self.shared.more.wait_timeout(st, left).unwrap().0;
        }
    }

    /// Fail at once if the console shows a crash or has ended (for waits
    /// on something else, such as the transfer port).
    pub fn check(&self) -> Result<(), ConsoleError> {
        let st = self.shared.state.lock().unwrap();
        if st.text[self.pos..].lines().any(is_crash_line) {
            drop(st);
            return Err(ConsoleError::Crash(self.crash_context()));
        }
        if st.eof {
            return Err(ConsoleError::Closed("console"));
        }
        Ok(())
    }

    /// Send `cmd`; returns its sequence number.
    pub fn send(&mut self, cmd: &str) -> Result<u32, ConsoleError> {
        self.seq += 1;
        let line = format!("{} {cmd}\n", self.seq);
        self.input
            .write_all(line.as_bytes())
            .and_then(|()| self.input.flush())
            .map_err(|source| ConsoleError::Io { what: "writing to the console", source })?;
        Ok(self.seq)
    }

    /// The output and status of command `seq`, each line within `limit`.
    pub fn wait_done(&mut self, seq: u32, limit: Duration) -> Result<Output, ConsoleError> {
        let begin = format!("KHTEST-BEGIN {seq}");
        self.wait_line(limit, |l| l == begin)?;
        let done = format!("KHTEST-DONE {seq} ");
        let mut text = String::new();
        loop {
            let line = self.wait_line(limit, |_| true)?;
            if let Some(rc) = line.strip_prefix(&done) {
                let status = rc.trim().parse().map_err(|_| ConsoleError::Protocol(format!("bad status line {line:?}")))?;
                return Ok(Output { status, text });
            }
            text.push_str(&line);
            text.push('\n');
        }
    }

    /// Run `cmd` and wait for it to finish.
    pub fn run(&mut self, cmd: &str, limit: Duration) -> Result<Output, ConsoleError> {
        let seq = self.send(cmd)?;
        self.wait_done(seq, limit)
    }

    /// Fill `buf` from `port`, watching the console all the while: a crash
    /// or its end stops the wait at once. Returns how much arrived: less
    /// than all of it if nothing came for `stall`.
    pub fn read_port(&self, port: &mut UnixStream, buf: &mut [u8], limit: Duration, stall: Duration) -> Result<usize, ConsoleError> {
        let deadline = Deadline::after(limit);
        let mut got = 0;
        let mut last = Instant::now();
        while got < buf.len() {
            let left = deadline.left();
            if left.is_zero() {
                return Err(ConsoleError::Timeout(limit));
            }
            if last.elapsed() >= stall {
                return Ok(got);
            }
            self.check()?;
            let io = |source| ConsoleError::Io { what: "reading the transfer port", source };
            port.set_read_timeout(Some(left.min(Duration::from_millis(200)))).map_err(io)?;
            match port.read(&mut buf[got..]) {
                Ok(0) => return Err(ConsoleError::Closed("transfer port")),
                Ok(n) => {
                    got += n;
                    last = Instant::now();
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(got)
    }

    /// The console from the first crash line after `pos` on (40 lines at
    /// most), once the guest has had a moment to print its backtrace.
    fn crash_context(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut st = self.shared.state.lock().unwrap();
        while !st.eof && Instant::now() < deadline {
            st = self.shared.more.wait_timeout(st, Duration::from_millis(200)).unwrap().0;
        }
        let lines: Vec<&str> = st.text[self.pos..].lines().skip_while(|l| !is_crash_line(l)).take(40).collect();
        lines.join("\n")
    }
}

/// Copy `output` to `log` and into `shared`, without `\r`.
fn spawn_reader(mut output: impl Read + Send + 'static, mut log: impl Write + Send + 'static, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let n = output.read(&mut buf).unwrap_or(0);
            let mut st = shared.state.lock().unwrap();
            if n == 0 {
                st.eof = true;
                shared.more.notify_all();
                return;
            }
            let _ = log.write_all(&buf[..n]);
            st.text.push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
            shared.more.notify_all();
        }
    });
}

#[cfg(test)]
mod tests {
    //! A shell script plays the guest over pipes: no kernel, no QEMU.

    use super::*;
    use std::process::{Child, ChildStdin, Command, Stdio};

    /// The command loop of `images/init`, after a boot banner.
    const INIT: &str = r#"echo "[    0.000] Linux version 6.12"; echo "KHTEST-READY 6.12"
while read -r seq cmd; do echo "KHTEST-BEGIN $seq"; (eval "$cmd") </dev/null; echo "KHTEST-DONE $seq $?"; done"#;

    struct Fake {
        child: Child,
        console: Console<ChildStdin>,
        log: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            // SAFETY: kill(2) of the process group the fake guest leads.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }

    /// `script` as the guest, its fd 3 the transfer port whose other end
    /// is returned.
    fn guest(script: &str) -> (Fake, UnixStream) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let (host_end, guest_end) = UnixStream::pair().unwrap();
        let fd = guest_end.as_raw_fd();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).process_group(0);
        // SAFETY: dup2 and fcntl are async-signal-safe; they make the port
        // the child's fd 3, open across exec.
        unsafe {
            cmd.pre_exec(move || {
                let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
                if ok < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        drop(guest_end);
        let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let console = Console::new(stdout, std::fs::File::create(&log).unwrap(), stdin);
        (Fake { child, console, log, _dir: dir }, host_end)
    }

    const SHORT: Duration = Duration::from_secs(10);

    #[test]
    fn the_boot_banner_is_waited_for_and_logged() {
        let (mut g, _) = guest(INIT);
        let ready = g.console.wait_line(SHORT, |l| l.starts_with("KHTEST-READY")).unwrap();
        assert_eq!(ready, "KHTEST-READY 6.12");
        let log = std::fs::read_to_string(&g.log).unwrap();
        assert!(log.starts_with("[    0.000] Linux version 6.12\n"), "{log}");
    }

    #[test]
    fn commands_are_framed_and_their_status_and_output_come_back() {
        let (mut g, _) = guest(INIT);
        g.console.wait_line(SHORT, |l| l.starts_with("KHTEST-READY")).unwrap();
        let out = g.console.run("echo one; echo two; exit 3", SHORT).unwrap();
        assert_eq!(out, Output { status: 3, text: "one\ntwo\n".into() });
        // Output of an earlier command is not taken for a later one's.
        let seq = g.console.send("echo KHTEST-DONE 99 0").unwrap();
        assert_eq!(g.console.wait_done(seq, SHORT).unwrap(), Output { status: 0, text: "KHTEST-DONE 99 0\n".into() });
        assert_eq!(g.console.run("true", SHORT).unwrap().status, 0);
    }

    #[test]
    fn a_panic_ends_a_wait_at_once_with_its_context() {
        let (mut g, _) = guest(INIT);
        g.console.wait_line(SHORT, |l| l.starts_with("KHTEST-READY")).unwrap();
        let t = Instant::now();
        let e = g
            .console
            .run(
                "echo '[ 2.0] Kernel panic - not syncing: Attempted to kill init!'; echo '[ 2.0] CPU: 0 PID: 1 Comm: init'; sleep 30",
                Duration::from_secs(60),
            )
            .unwrap_err();
        let ConsoleError::Crash(text) = e else { panic!("{e:?}") };
        assert!(text.starts_with("[ 2.0] Kernel panic") && text.contains("PID: 1 Comm: init"), "{text}");
        assert!(t.elapsed() < Duration::from_secs(10), "the panic was seen after {:?}", t.elapsed());
    }

    #[test]
    fn a_panic_in_the_middle_of_a_transfer_ends_it_at_once() {
        let (mut g, mut port) = guest(INIT);
        g.console.wait_line(SHORT, |l| l.starts_with("KHTEST-READY")).unwrap();
        // Half the file, then the kernel dies.
        g.console.send("printf 'half of it' >&3; sleep 0.3; echo 'Oops: general protection fault'; sleep 30").unwrap();
        let mut buf = [0u8; 100];
        let t = Instant::now();
        let e = g.console.read_port(&mut port, &mut buf, Duration::from_secs(60), Duration::from_secs(15)).unwrap_err();
        assert!(matches!(&e, ConsoleError::Crash(text) if text.contains("general protection fault")), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(10), "the crash was seen after {:?}", t.elapsed());
    }

    #[test]
    fn a_stalled_transfer_says_how_far_it_got_and_a_hang_ends_at_its_deadline() {
        let (mut g, mut port) = guest(INIT);
        g.console.wait_line(SHORT, |l| l.starts_with("KHTEST-READY")).unwrap();
        g.console.send("printf 'twelve bytes' >&3; sleep 30").unwrap();
        let mut buf = [0u8; 100];
        let got = g.console.read_port(&mut port, &mut buf, Duration::from_secs(60), Duration::from_millis(600)).unwrap();
        assert_eq!(&buf[..got], b"twelve bytes");
        let t = Instant::now();
        let e = g.console.wait_line(Duration::from_millis(400), |l| l == "never").unwrap_err();
        assert!(matches!(e, ConsoleError::Timeout(_)), "{e:?}");
        assert!(t.elapsed() >= Duration::from_millis(400) && t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn a_guest_that_goes_away_closes_the_console() {
        let (mut g, _) = guest("echo KHTEST-READY 6.12; read -r seq cmd; echo \"KHTEST-BEGIN $seq\"; exit 0");
        g.console.wait_line(SHORT, |l| l.starts_with("KHTEST-READY")).unwrap();
        let e = g.console.run("true", SHORT).unwrap_err();
        assert!(matches!(e, ConsoleError::Closed("console")), "{e:?}");
        assert!(matches!(g.console.check(), Err(ConsoleError::Closed(_))));
    }
}
