//! Reading a failed kbuild run's output as kbuild writes it: the first
//! `make[N]: ***` line, and the tool lines just before it that say why (a
//! compiler's `error:`, a `find:` or `cp:` message, a linker's undefined
//! reference, modpost's `ERROR:`), kept to a few lines for a verdict.
//!
//! With `make -j` the first error is rarely among the last lines, and the
//! `***` lines that follow the first one are make's cascade, so neither the
//! log's tail nor every error line says what broke.

/// At most this many tool lines are quoted before make's line.
const MAX_CAUSES: usize = 3;

/// How far before make's first `***` line its causes are looked for: a
/// compiler error with its source excerpt and notes spans a few lines
/// each, and `-j` interleaves other jobs' lines.
const CAUSE_WINDOW: usize = 60;

/// What a failed build's log says went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The tool lines that say why, then make's first `***` line, in log
    /// order, with typographic quotes (`‘’`, a UTF-8 locale's) as ASCII.
    pub lines: Vec<String>,
    /// The 1-based line of the log where make's first `***` line is (or,
    /// without one, the first quoted line).
    pub line: Option<usize>,
    /// Tool lines before make's line that were not quoted.
    pub more: usize,
    /// What the host did to the build, if the log says so: it ran out
    /// of disk space, or a compiler was killed (the OOM killer, a person).
    /// Then the tree is not at fault.
    pub host_fault: Option<&'static str>,
}

/// Read `log` (a whole kbuild run's output).
pub fn first_failure(log: &str) -> Failure {
    let lines: Vec<&str> = log.lines().collect();
    let host_fault = if lines.iter().any(|l| l.contains("No space left on device")) {
        Some("ran out of disk space")
    } else if lines.iter().any(|l| l.contains("Killed signal terminated program") || (is_make_failure(l) && l.ends_with("Error 137"))) {
        Some("had a program killed (out of memory?)")
    } else {
        None
    };
    let failure = lines.iter().position(|l| is_make_failure(l));
    let (from, to) = match failure {
        Some(f) => (f.saturating_sub(CAUSE_WINDOW), f),
        None => (0, lines.len()),
    };
    let causes: Vec<usize> = (from..to).filter(|&i| is_cause(lines[i])).collect();
    let quoted = &causes[..causes.len().min(MAX_CAUSES)];
    let mut picked: Vec<usize> = quoted.to_vec();
    picked.extend(failure);
    Failure {
        lines: picked.iter().map(|&i| plain_quotes(lines[i].trim())).collect(),
        line: failure.or(picked.first().copied()).map(|i| i + 1),
        more: causes.len() - quoted.len(),
        host_fault,
    }
}

impl Failure {
    /// The lines indented for a verdict, with a note of what was left out.
    pub fn quote(&self, indent: &str) -> String {
        let mut s: String = self.lines.iter().map(|l| format!("{indent}{l}\n")).collect();
        if self.more > 0 {
            s += &format!("{indent}(and {} more error line(s) before it)\n", self.more);
        }
        s
    }
}

/// `make: *** ...` or `make[N]: *** ...`, but not the lines make prints
/// after a failure it already reported.
pub fn is_make_failure(line: &str) -> bool {
    let t = line.trim_start();
    let Some(rest) = t.strip_prefix("make") else { return false };
    let rest = match rest.strip_prefix('[') {
        Some(r) => match r.split_once(']') {
            Some((n, r)) if n.bytes().all(|b| b.is_ascii_digit()) => r,
            _ => return false,
        },
        None => rest,
    };
    rest.starts_with(": *** ") && !rest.contains("Waiting for unfinished jobs") && !rest.contains("Deleting file")
}

/// Programs whose messages (`find: ...`) in a build log are errors: kbuild
/// prints its own lines indented, these write to stderr unindented.
const TOOLS: &[&str] = &[
    "find", "cp", "sh", "/bin/sh", "bash", "tar", "xz", "cpio", "mv", "ln", "mkdir", "rm", "sed", "perl", "awk", "cat", "install", "strip",
    "objcopy", "chmod", "touch", "gzip", "xargs", "sort", "patch", "python3", "bc", "flex", "bison",
];

/// A line that says why a command failed.
pub fn is_cause(line: &str) -> bool {
    let t = line.trim();
    if t.is_empty() || is_make_failure(t) {
        return false;
    }
    let lower = t.to_ascii_lowercase();
    if lower.contains("warning:") && !lower.contains("error:") {
        return false;
    }
    if t.contains(": error:") || t.contains(": fatal error:") || t.contains(": Error:") || t.starts_with("ERROR: ") {
        return true;
    }
    if [
        "undefined reference to",
        "multiple definition of",
        "No such file or directory",
        "Permission denied",
        "No space left on device",
        "command not found",
        ": not found",
    ]
    .iter()
    .any(|p| t.contains(p))
    {
        return true;
    }
    let Some((head, _)) = t.split_once(": ") else { return false };
    if head.contains(' ') {
        return false;
    }
    let program = head.rsplit('/').next().unwrap_or(head);
    // A linker (`ld`, `aarch64-linux-gnu-ld`, `ld.lld`), a listed tool, or
    // a shell script's own error (`gen_kheaders.sh: 12: ...`).
    program == "ld" || program.ends_with("-ld") || program.starts_with("ld.") || TOOLS.contains(&head) || program.ends_with(".sh")
}

/// Typographic quotes as ASCII, so that a verdict reads the same in any
/// locale.
pub fn plain_quotes(line: &str) -> String {
    line.replace(['\u{2018}', '\u{2019}'], "'").replace(['\u{201c}', '\u{201d}'], "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_make_failure_and_the_tool_line_before_it() {
        let log = "  CC      kernel/a.o\n\
                   find: \u{2018}arch/x86_64\u{2019}: No such file or directory\n\
                   \x20 CC      kernel/b.o\n\
                   make[4]: *** [../kernel/Makefile:164: kernel/kheaders.list] Error 1\n\
                   make[3]: *** [../scripts/Makefile.build:478: kernel] Error 2\n\
                   make[2]: *** Waiting for unfinished jobs....\n";
        let f = first_failure(log);
        assert_eq!(
            f.lines,
            ["find: 'arch/x86_64': No such file or directory", "make[4]: *** [../kernel/Makefile:164: kernel/kheaders.list] Error 1"]
        );
        assert_eq!(f.line, Some(4));
        assert_eq!(f.host_fault, None);
    }

    #[test]
    fn compiler_and_linker_errors_keep_their_file_and_line() {
        let cc = "kernel/kheaders.c: In function 'ikheaders_init':\n\
                  kernel/kheaders.c:60:9: error: expected ';' before 'return'\n\
                  \x20  60 |         return 0\n\
                  make[4]: *** [../scripts/Makefile.build:229: kernel/kheaders.o] Error 1\n";
        assert_eq!(first_failure(cc).lines[0], "kernel/kheaders.c:60:9: error: expected ';' before 'return'");
        let ld = "  LD      vmlinux.o\n\
                  ld: vmlinux.o: in function `ikheaders_init':\n\
                  kheaders.c:(.init.text+0x5): undefined reference to `khtest_nothing'\n\
                  make[2]: *** [../scripts/Makefile.vmlinux:34: vmlinux] Error 1\n";
        let f = first_failure(ld);
        assert_eq!(f.lines.len(), 3, "{f:?}");
        assert!(f.lines[1].contains("undefined reference to `khtest_nothing'"));
    }

    #[test]
    fn no_rule_is_its_own_reason_and_the_cascade_is_left_out() {
        let log = "make[3]: *** No rule to make target 'Module.symvers', needed by 'kernel/kheaders_data.tar.xz'.  Stop.\n\
                   make[2]: *** [../scripts/Makefile.build:478: kernel] Error 2\n";
        let f = first_failure(log);
        assert_eq!(f.lines.len(), 1);
        assert!(f.lines[0].contains("No rule to make target 'Module.symvers'"));
    }

    #[test]
    fn many_errors_are_cut_and_counted() {
        let mut log = String::new();
        for i in 1..=6 {
            log += &format!("a.c:{i}:1: error: bad {i}\n");
        }
        log += "make[1]: *** [Makefile:1: a.o] Error 1\n";
        let f = first_failure(&log);
        assert_eq!(f.lines.len(), 4);
        assert_eq!(f.more, 3);
        assert!(f.quote("  ").contains("(and 3 more error line(s) before it)"));
    }

    #[test]
    fn kbuild_lines_and_warnings_are_not_causes() {
        for l in [
            "  CC      kernel/sh.o",
            "  GEN     kernel/kheaders_data.tar.xz",
            "a.c:1:1: warning: unused",
            "make[1]: Entering directory '/b'",
            "WARNING: modpost: Module.symvers is missing",
        ] {
            assert!(!is_cause(l), "{l}");
        }
        for l in [
            "cp: cannot stat 'x': No such file or directory",
            "/src/kernel/gen_kheaders.sh: 12: oops",
            "aarch64-linux-gnu-ld: a.o: bad",
            "ERROR: modpost: \"x\" [t.ko] undefined!",
            "cpio: x.h: Cannot stat",
        ] {
            assert!(is_cause(l), "{l}");
        }
    }

    #[test]
    fn a_full_disk_or_a_killed_compiler_is_the_hosts_and_an_empty_log_gives_nothing() {
        let f = first_failure("cc1: fatal error: kernel/a.o: No space left on device\nmake[1]: *** [x] Error 1\n");
        assert_eq!(f.host_fault, Some("ran out of disk space"));
        let f = first_failure("gcc: fatal error: Killed signal terminated program cc1\nmake[4]: *** [x] Error 1\n");
        assert_eq!(f.host_fault, Some("had a program killed (out of memory?)"));
        assert_eq!(first_failure("a.c:1:1: error: x\nmake[1]: *** [x] Error 1\n").host_fault, None);
        let f = first_failure("");
        assert!(f.lines.is_empty() && f.line.is_none());
    }
}
