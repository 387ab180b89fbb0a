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

/// A `.tar.xz` of `files` (path, contents) written to `path`.
fn archive(path: &std::path::Path, files: &[(&str, &str)]) {
    let mut raw = Vec::new();
    {
        let mut b = tar::Builder::new(&mut raw);
        for (name, text) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, text.as_bytes()).unwrap();
        }
        b.finish().unwrap();
    }
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    std::io::Write::write_all(&mut xz, &raw).unwrap();
    std::fs::write(path, xz.finish().unwrap()).unwrap();
}

fn port(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kheaders-selftest"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
}

#[test]
fn an_archive_that_is_missing_or_a_directory_skips_as_the_shell_kselftest_does() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("missing.tar.xz");
    for (args, env) in [
        (vec![missing.to_str().unwrap()], vec![]),
        (vec![], vec![("KHEADERS_ARCHIVE", missing.to_str().unwrap())]),
        (vec![d.path().to_str().unwrap()], vec![]),
        (vec!["--", missing.to_str().unwrap()], vec![]),
    ] {
        let (code, out) = port(&args, &env);
        assert_eq!(code, Some(4), "{args:?} {env:?}: {out}");
        assert!(out.contains("1..0 # SKIP") && out.contains("is not a readable file"), "{out}");
    }
}

#[test]
fn a_damaged_archive_is_not_ok_1_named_as_damage() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("k.tar.xz");
    archive(&a, &[("include/a.h", "x")]);
    let mut bytes = std::fs::read(&a).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x10;
    std::fs::write(&a, bytes).unwrap();
    let (code, out) = port(&[a.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("# the archive is damaged") && out.contains("not ok 1 archive extracts"), "{out}");
}

#[test]
fn an_unusable_tmpdir_skips_with_ktap() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("k.tar.xz");
    archive(&a, &[("include/a.h", "x")]);
    let (code, out) = port(&[a.to_str().unwrap()], &[("TMPDIR", "/nonexistent/tmp")]);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.starts_with("KTAP version 1\n1..0 # SKIP cannot make a temporary directory in /nonexistent/tmp"), "{out}");
}

#[test]
fn sigterm_during_the_build_ends_make_closes_the_ktap_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (a, tmp, marker) = (d.path().join("k.tar.xz"), d.path().join("tmp"), d.path().join("sleeping"));
    std::fs::create_dir(&tmp).unwrap();
    // A "kernel tree" whose module build hangs, and says where it sleeps.
    let makefile = format!("modules:\n\tsleep 60 & echo $$! > {}; wait\n", marker.display());
    archive(&a, &[("Makefile", &makefile), ("include/a.h", "x")]);
    let child =
        Command::new(env!("CARGO_BIN_EXE_kheaders-selftest")).arg(&a).env("TMPDIR", &tmp).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let t = std::time::Instant::now();
    while !marker.exists() && t.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let sleeper = std::fs::read_to_string(&marker).expect("the build started").trim().to_owned();
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(143), "{out}");
    assert!(out.trim_end().ends_with("Bail out! interrupted by signal 15"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let state = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z"), "make's child still runs: {state}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "the temporary directory stayed");
}

/// The shell kselftest, run as kselftest runs it, with `env`.
fn shell_kselftest(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kheaders/run_kheaders_modbuild.sh");
    let mut cmd = Command::new("sh");
    cmd.arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn the_shell_kselftest_agrees_on_damage_a_missing_archive_and_no_tmpdir() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("k.tar.xz");
    archive(&a, &[("include/a.h", "x")]);
    let (code, out) = shell_kselftest(&[("KHEADERS_ARCHIVE", a.to_str().unwrap())]);
    assert!(code == Some(0) && out.contains("ok 1 archive extracts"), "{out}");
    let mut bytes = std::fs::read(&a).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x10;
    let bad = d.path().join("bad.tar.xz");
    std::fs::write(&bad, bytes).unwrap();
    let (code, out) = shell_kselftest(&[("KHEADERS_ARCHIVE", bad.to_str().unwrap())]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("# the archive is damaged")
            && out.contains("not ok 1 archive extracts")
            && out.contains("ok 2 archive has no Module.symvers # SKIP not extracted"),
        "{out}"
    );
    let (code, out) = shell_kselftest(&[("KHEADERS_ARCHIVE", d.path().to_str().unwrap())]);
    assert!(code == Some(4) && out.contains("is not a readable file"), "{out}");
    let (code, out) = shell_kselftest(&[("KHEADERS_ARCHIVE", a.to_str().unwrap()), ("TMPDIR", "/nonexistent/tmp")]);
    assert!(code == Some(4) && out.contains("1..0 # SKIP cannot make a temporary directory"), "{out}");
    assert!(!std::path::Path::new("/headers").exists(), "unpacked outside a temporary directory");
}

/// `kheaders install` and `remove` through the binary, in a scratch root.
#[test]
fn kheaders_install_and_remove_through_the_binary() {
    let kheaders = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_kheaders")).args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
    };
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let (a, headers_only) = (d.path().join("k.tar.xz"), d.path().join("h.tar.xz"));
    archive(&a, &[("Makefile", "all:\n"), ("include/config/kernel.release", "9.9.9-test\n")]);
    archive(&headers_only, &[("include/config/kernel.release", "9.9.9-test\n")]);
    let common = ["--root", root.to_str().unwrap(), "--release", "9.9.9-test"];
    let (code, out) = kheaders(&[&["install", "--archive", headers_only.to_str().unwrap()][..], &common].concat());
    assert!(code == Some(1) && out.contains("headers only"), "{out}");
    let (code, out) = kheaders(&[&["install", "--archive", a.to_str().unwrap()][..], &common].concat());
    assert!(code == Some(0) && out.contains("linked from"), "{out}");
    // The link is written as it reads on the device: absolute, from its root.
    assert_eq!(std::fs::read_link(root.join("lib/modules/9.9.9-test/build")).unwrap(), std::path::Path::new("/usr/src/kheaders-9.9.9-test"));
    assert!(root.join("usr/src/kheaders-9.9.9-test/Makefile").is_file());
    let (code, out) = kheaders(&[&["remove"][..], &common].concat());
    assert!(code == Some(0) && out.contains("removed"), "{out}");
    assert_eq!(kheaders(&["frobnicate"]).0, Some(2));
}
