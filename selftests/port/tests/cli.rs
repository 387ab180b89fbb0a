//! The port's command line: `--help` is help, not an archive path.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_kheaders-selftest")).args(args).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn help_prints_the_usage_and_exits_0() {
    for flag in ["--help", "-h"] {
        let (code, out, _) = run(&[flag]);
        assert_eq!(code, Some(0));
        assert!(out.starts_with("usage: kheaders-selftest [ARCHIVE]") && out.contains("KHEADERS_ARCHIVE"), "{out}");
    }
}

#[test]
fn an_unknown_option_or_a_second_archive_is_a_usage_error() {
    let (code, out, err) = run(&["--archive=x"]);
    assert_eq!(code, Some(2));
    assert!(out.is_empty() && err.contains("unknown option --archive=x") && err.contains("usage:"), "{err}");
    let (code, _, err) = run(&["a.tar.xz", "b.tar.xz"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("one archive at most"), "{err}");
}
