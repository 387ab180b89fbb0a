//! Every subcommand's exit statuses (harness/src/exit_codes.rs,
//! docs/verdicts.md), through the `khtest` binary, on inputs that need no
//! kernel. `run`'s FAIL (1), ERROR (3) and interrupt (130) statuses are
//! proved with a fake kernel tree in `host_faults.rs`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use khtest::exit_codes::{BAD_INPUT, BENCH_FAILED, HOST_ERROR, OK, USAGE};

fn khtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_khtest"))
        .args(args)
        .env("KHTEST_ROOT", env!("CARGO_MANIFEST_DIR").to_owned() + "/..")
        .env_remove("NO_COLOR")
        .output()
        .unwrap()
}

/// The status, with what was printed for the assertion message.
fn status(out: &Output) -> (Option<i32>, String) {
    let text = format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains('\x1b'), "no colour codes off a terminal:\n{text}");
    (out.status.code(), text)
}

fn expect(args: &[&str], code: u8) -> String {
    let (got, text) = status(&khtest(args));
    assert_eq!(got, Some(i32::from(code)), "khtest {args:?}:\n{text}");
    text
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn usage_errors_exit_2_whatever_the_subcommand() {
    expect(&["no-such-subcommand"], USAGE);
    expect(&["run", "--no-such-flag"], USAGE);
    let text = expect(&["--matrix", "/nonexistent/matrix.yaml", "list"], USAGE);
    assert!(text.contains("/nonexistent/matrix.yaml"), "{text}");
    let text = expect(&["run", "no-such-cell"], USAGE);
    assert!(text.contains("no-such-cell"), "{text}");
    expect(&["tree", "--tree", "/nonexistent/tree"], USAGE);
    expect(&["bench", "--tree", "/nonexistent/tree"], USAGE);
}

#[test]
fn list_exits_0() {
    let text = expect(&["list"], OK);
    assert!(text.contains("x86_64-y-o"), "{text}");
    let text = expect(&["list", "--json"], OK);
    assert!(text.contains("\"name\": \"x86_64-y-o\""), "{text}");
}

#[test]
fn extract_exits_4_on_a_file_with_no_archive_and_0_with_one() {
    let d = tempfile::tempdir().unwrap();
    let junk = d.path().join("vmlinux");
    std::fs::write(&junk, vec![0x55u8; 8192]).unwrap();
    let out = d.path().join("k.tar.xz");
    let text = expect(&["extract", path(&junk), "-o", path(&out)], BAD_INPUT);
    assert!(text.contains("no kheaders archive in"), "{text}");
    expect(&["extract", "/nonexistent/vmlinux", "-o", path(&out)], BAD_INPUT);
    assert!(!out.exists(), "nothing written for bad input");

    // A kernel file of junk around a real .tar.xz with the archive's marker.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "./include/linux/kconfig.h", &b"x;\n"[..]).unwrap();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&tar.into_inner().unwrap()).unwrap();
    let archive = xz.finish().unwrap();
    let image = d.path().join("kheaders.ko");
    std::fs::write(&image, [vec![0x55u8; 4096], archive.clone(), vec![0xaa; 100]].concat()).unwrap();
    expect(&["extract", path(&image), "-o", path(&out)], OK);
    assert_eq!(std::fs::read(&out).unwrap(), archive);

    let dir_out = d.path().join("a-directory");
    std::fs::create_dir(&dir_out).unwrap();
    expect(&["extract", path(&image), "-o", path(&dir_out)], HOST_ERROR);
}

#[test]
fn bench_exits_5_when_it_cannot_measure() {
    let d = tempfile::tempdir().unwrap();
    let matrix = d.path().join("matrix.yaml");
    std::fs::write(&matrix, "cells:\n  - name: only\n    arch: x86_64\n    kheaders: y\n").unwrap();
    let text = expect(&["--matrix", path(&matrix), "bench", "--out", path(d.path()), "--cache", path(&d.path().join("cache"))], BENCH_FAILED);
    assert!(text.contains("the matrix has no") && text.contains("cell for the bench"), "{text}");
}

#[test]
fn tree_exits_3_when_the_tree_cannot_be_prepared() {
    // A tree that looks like a kernel's at its top, to which the series
    // cannot apply.
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("Makefile"), "all:\n").unwrap();
    std::fs::write(tree.join("Kconfig"), "# fake\n").unwrap();
    let cache = d.path().join("cache");
    let text = expect(&["tree", "--tree", path(&tree), "--cache", path(&cache)], HOST_ERROR);
    assert!(text.contains("khtest: error:"), "{text}");
    expect(&["tree", "--tree", path(&tree), "--cache", path(&cache), "--unpatched"], OK);
}
