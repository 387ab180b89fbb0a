//! KTAP output, the format kselftest and KUnit print and their tools parse.

use std::io::Write;

/// Exit status kselftest uses for "skipped".
pub const KSFT_SKIP: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Result {
    Pass,
    Fail,
    Skip,
}

/// Writes one KTAP test plan and its results.
pub struct Ktap<W: Write> {
    out: W,
    next: usize,
    failed: bool,
}

impl<W: Write> Ktap<W> {
    pub fn new(mut out: W, plan: usize) -> Self {
        let _ = writeln!(out, "KTAP version 1\n1..{plan}");
        Ktap { out, next: 1, failed: false }
    }

    /// A plan with nothing to run, and why.
    pub fn skip_all(mut out: W, reason: &str) -> i32 {
        let _ = writeln!(out, "KTAP version 1\n1..0 # SKIP {reason}");
        KSFT_SKIP
    }

    pub fn diag(&mut self, text: &str) {
        for line in text.lines() {
            let _ = writeln!(self.out, "# {line}");
        }
    }

    pub fn result(&mut self, result: Result, name: &str, reason: &str) {
        let n = self.next;
        self.next += 1;
        let _ = match result {
            Result::Pass => writeln!(self.out, "ok {n} {name}"),
            Result::Skip => writeln!(self.out, "ok {n} {name} # SKIP {reason}"),
            Result::Fail => {
                self.failed = true;
                writeln!(self.out, "not ok {n} {name}")
            }
        };
    }

    /// End the output early: no more results will come.
    pub fn bail_out(&mut self, why: &str) {
        let _ = writeln!(self.out, "Bail out! {why}");
    }

    /// kselftest exit status: 0 if nothing failed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_ktap_and_exit_code() {
        let mut buf = Vec::new();
        let code = {
            let mut k = Ktap::new(&mut buf, 3);
            k.result(Result::Pass, "a", "");
            k.diag("two\nlines");
            k.result(Result::Skip, "b", "why");
            k.result(Result::Fail, "c", "");
            k.exit_code()
        };
        assert_eq!(code, 1);
        assert_eq!(String::from_utf8(buf).unwrap(), "KTAP version 1\n1..3\nok 1 a\n# two\n# lines\nok 2 b # SKIP why\nnot ok 3 c\n");
    }
}
