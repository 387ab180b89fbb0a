//! What the host or the input gets wrong, end to end through the `khtest`
//! binary, with a fake kernel tree (a Makefile that plays kbuild) so that no
//! kernel is built: a malformed matrix, a Kconfig option that does not
//! stick, a kernel build that fails (the tree's fault: FAIL), a make that
//! is killed or runs out of space (the host's: ERROR). Each must give its
//! own clear verdict and exit status, and one cell's failure must not stop
//! the others.

use std::path::Path;
use std::process::{Command, Output};

const FAKE_MAKEFILE: &str = r#"# A fake kernel tree: configures like kbuild, then fails to build, in
# the way the cell's config asks for.
all:
	@echo "  CC      kernel/fake.o"
	@if grep -q CONFIG_FAKE_KILLED $(O)/.config; then kill -KILL $$PPID; sleep 5; fi
	@if grep -q CONFIG_FAKE_NO_SPACE $(O)/.config; then \
		echo "kernel/fake.o: No space left on device" >&2; exit 1; fi
	@echo "kernel/fake.c:1:1: error: this build is broken on purpose" >&2
	@echo "  CC      kernel/other.o"
	@exit 2

tinyconfig:
	@printf 'CONFIG_64BIT=y\n' > $(O)/.config

# Drops CONFIG_DROPPED, as Kconfig drops an option whose dependencies are unmet.
olddefconfig:
	@grep -v CONFIG_DROPPED $(O)/.config > $(O)/.config.new; mv $(O)/.config.new $(O)/.config
"#;

const MATRIX: &str = "cells:
  - name: dropped
    arch: x86_64
    kheaders: y
    patched: false
    modbuild: false
    fragments: [dropped.config]
  - name: broken
    arch: x86_64
    kheaders: y
    patched: false
    modbuild: false
  - name: killed
    arch: x86_64
    kheaders: y
    patched: false
    modbuild: false
    fragments: [killed.config]
  - name: no-space
    arch: x86_64
    kheaders: y
    patched: false
    modbuild: false
    fragments: [no-space.config]
";

fn khtest(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_khtest"))
        .args(args)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--cache")
        .arg(dir.join("cache"))
        .env("KHTEST_ROOT", env!("CARGO_MANIFEST_DIR").to_owned() + "/..")
        .output()
        .unwrap()
}

/// A fake tree and a matrix with the two cells, in `dir`.
fn setup(dir: &Path) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("Makefile"), FAKE_MAKEFILE).unwrap();
    std::fs::write(tree.join("Kconfig"), "# fake\n").unwrap();
    let configs = dir.join("configs");
    std::fs::create_dir_all(configs.join("fragments")).unwrap();
    std::fs::write(configs.join("matrix.yaml"), MATRIX).unwrap();
    std::fs::write(configs.join("fragments/dropped.config"), "CONFIG_DROPPED=y\n").unwrap();
    std::fs::write(configs.join("fragments/killed.config"), "CONFIG_FAKE_KILLED=y\n").unwrap();
    std::fs::write(configs.join("fragments/no-space.config"), "CONFIG_FAKE_NO_SPACE=y\n").unwrap();
}

fn results(dir: &Path, cell: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("out").join(cell).join("results.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_broken_build_is_the_trees_fault_a_killed_or_full_one_the_hosts_and_all_are_reported() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let matrix = d.path().join("configs/matrix.yaml");
    let tree = d.path().join("tree");
    let out = khtest(&["--matrix", matrix.to_str().unwrap(), "run", "--tree", tree.to_str().unwrap()], d.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "an ERROR cell makes the run exit 3\nstdout:\n{stdout}\nstderr:\n{stderr}");

    let dropped = results(d.path(), "dropped");
    assert_eq!(dropped["status"], "FAIL", "{dropped}");
    assert_eq!(dropped["failed_phase"], "configure");
    let why = dropped["reason"].as_str().unwrap();
    assert!(why.contains("CONFIG_DROPPED=y requested") && why.contains("did not stick"), "{why}");

    // The first cell's failure did not stop the others. A build that the
    // tree broke is a FAIL quoting the compiler's line, then make's.
    let broken = results(d.path(), "broken");
    assert_eq!(broken["status"], "FAIL", "{broken}");
    assert_eq!(broken["failed_phase"], "build");
    let why = broken["reason"].as_str().unwrap();
    let quoted: Vec<&str> = why.lines().skip(1).take(2).map(str::trim).collect();
    assert_eq!(quoted, ["kernel/fake.c:1:1: error: this build is broken on purpose", "make: *** [Makefile:9: all] Error 2"], "{why}");
    assert!(why.contains("build.log line") && why.contains(&d.path().join("out/broken/build.log").display().to_string()), "{why}");

    let killed = results(d.path(), "killed");
    assert_eq!(killed["status"], "ERROR", "{killed}");
    assert!(killed["reason"].as_str().unwrap().contains("killed by signal 9"), "{killed}");
    let full = results(d.path(), "no-space");
    assert_eq!(full["status"], "ERROR", "{full}");
    assert!(full["reason"].as_str().unwrap().contains("ran out of disk space"), "{full}");
    for cell in ["dropped", "broken", "killed", "no-space"] {
        assert!(stdout.contains(cell), "{stdout}");
    }

    // FAILs alone exit 1.
    let out = khtest(&["--matrix", matrix.to_str().unwrap(), "run", "broken", "dropped", "--tree", tree.to_str().unwrap()], d.path());
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_malformed_matrix_is_refused_before_anything_is_built() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let matrix = d.path().join("configs/matrix.yaml");
    std::fs::write(
        &matrix,
        MATRIX.replace("    kheaders: y\n    patched: false\n    modbuild: false\n    fragments", "    kheaders: y\n    colour: blue\n    fragments"),
    )
    .unwrap();
    let out = khtest(&["--matrix", matrix.to_str().unwrap(), "run"], d.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("matrix.yaml") && stderr.contains("colour") && stderr.contains("line 5"), "{stderr}");
    assert!(!d.path().join("out").exists() && !d.path().join("cache").exists(), "something was made before the matrix was checked");
}

#[test]
fn an_unwritable_output_directory_is_named() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    // A file where the output directory should be: no permission trick
    // (root ignores modes), the path just cannot be a directory.
    std::fs::write(d.path().join("out"), "not a directory").unwrap();
    let matrix = d.path().join("configs/matrix.yaml");
    let tree = d.path().join("tree");
    let out = khtest(&["--matrix", matrix.to_str().unwrap(), "run", "broken", "--tree", tree.to_str().unwrap()], d.path());
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&d.path().join("out").display().to_string()), "the error must name the path: {text}");
}

/// `khtest run broken` on a fake tree whose build runs a long child,
/// tagged with `marker`; returns once that child runs, with its pid.
// The child is returned, and the caller waits for it.
#[allow(clippy::zombie_processes)]
fn spawn_sleeping_build(d: &Path, marker: &str) -> (std::process::Child, String) {
    setup(d);
    let makefile = FAKE_MAKEFILE.replace(
        "all:\n\t@echo \"  CC      kernel/fake.o\"",
        &format!("all:\n\t@sh -c 'sleep 300; echo {marker}'\n\t@echo \"  CC      kernel/fake.o\""),
    );
    std::fs::write(d.join("tree/Makefile"), makefile).unwrap();
    let matrix = d.join("configs/matrix.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_khtest"))
        .args(["--matrix", matrix.to_str().unwrap(), "run", "broken", "--tree"])
        .arg(d.join("tree"))
        .arg("--out")
        .arg(d.join("out"))
        .arg("--cache")
        .arg(d.join("cache"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if let Some(pid) = running(marker) {
            return (child, pid);
        }
        if start.elapsed().as_secs() >= 30 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the fake build never started");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The pid of a process whose command line has `marker`.
fn running(marker: &str) -> Option<String> {
    let o = Command::new("pgrep").arg("-f").arg(format!("sleep 300; echo {marker}")).output().unwrap();
    String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned)
}

#[test]
fn sigint_during_a_build_ends_make_and_marks_the_cell_interrupted() {
    let d = tempfile::tempdir().unwrap();
    let marker = format!("khtest-sigint-{}", std::process::id());
    let (mut child, _) = spawn_sleeping_build(d.path(), &marker);
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit status after SIGINT");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(running(&marker).is_none(), "the build's child outlived khtest");
    let r = results(d.path(), "broken");
    assert_eq!(r["status"], "ERROR");
    assert!(r["reason"].as_str().unwrap().contains("interrupted by signal 2"), "{r}");
}

/// The state letter of a process (`R`, `S`, `T` stopped, `Z`...).
fn state(pid: &str) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()).unwrap_or('?')
}

/// Wait up to 10 s for `pid` to be in (or out of) state `T`.
fn wait_stopped(pid: &str, stopped: bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < 10 {
        if (state(pid) == 'T') == stopped {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn ctrl_z_stops_the_build_with_khtest_and_fg_continues_both() {
    let d = tempfile::tempdir().unwrap();
    let marker = format!("khtest-sigtstp-{}", std::process::id());
    let (mut child, build) = spawn_sleeping_build(d.path(), &marker);
    let me = child.id().to_string();
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTSTP) };
    assert!(wait_stopped(&build, true), "the build was not stopped with khtest: state {}", state(&build));
    assert!(wait_stopped(&me, true), "khtest did not stop itself: state {}", state(&me));
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    assert!(wait_stopped(&me, false), "khtest did not continue");
    assert!(wait_stopped(&build, false), "the build was not continued with khtest: state {}", state(&build));
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
}

#[test]
fn a_full_output_disk_is_named_before_anything_is_built() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let out = d.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let matrix = d.path().join("configs/matrix.yaml");
    // A 1 MiB tmpfs as the output directory, mounted in a mount namespace
    // of the command's own, so that nothing else on the host sees it.
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let userns: &[&str] = if root { &[] } else { &["--map-root-user"] };
    let o = Command::new("unshare")
        .args(userns)
        .args(["--mount", "--propagation", "private", "sh", "-c", r#"mount -t tmpfs -o size=1m khtest-full "$0" && exec "$@""#])
        .arg(&out)
        .arg(env!("CARGO_BIN_EXE_khtest"))
        .args(["--matrix", matrix.to_str().unwrap(), "run", "broken", "--tree"])
        .arg(d.path().join("tree"))
        .arg("--out")
        .arg(&out)
        .arg("--cache")
        .arg(d.path().join("cache"))
        .env("KHTEST_ROOT", env!("CARGO_MANIFEST_DIR").to_owned() + "/..")
        .output()
        .expect("unshare (Debian package util-linux)");
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!text.contains("mount:") && !text.contains("unshare:"), "cannot mount a small tmpfs for this test: {text}");
    assert_eq!(o.status.code(), Some(3), "{text}");
    assert!(text.contains("ERROR broken (in phase preflight)"), "{text}");
    assert!(
        text.contains(&format!("{} has 1 MiB free", out.join("broken").display()))
            || text.contains(&format!("{} has 0 MiB free", out.join("broken").display())),
        "the error must name the path and its free space: {text}"
    );
    assert!(!d.path().join("cache/trees").exists(), "nothing may be unpacked or built before the space is checked");
}

/// `khtest extract` on a hostile file: the exit status, what it printed,
/// and its peak resident memory in MiB.
fn extract_measured(input: &Path, out: &Path) -> (Option<i32>, String, i64) {
    let child = Command::new(env!("CARGO_BIN_EXE_khtest"))
        .arg("extract")
        .arg(input)
        .arg("-o")
        .arg(out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    // SAFETY: rusage is plain data, for which all zeros is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we pass. RUSAGE_CHILDREN covers
    // the children this test process has waited for (nextest runs each
    // test in a process of its own; each bomb gets its own test).
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.code(), text, ru.ru_maxrss / 1024)
}

fn an_xz_bomb_is_refused_in_bounded_memory(bomb: &str, why: &str) {
    let d = tempfile::tempdir().unwrap();
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/xz-bombs").join(bomb);
    let (code, text, rss_mib) = extract_measured(&input, &d.path().join("k.tar.xz"));
    assert_eq!(code, Some(4), "bad input to extract: {text}");
    assert!(text.contains("no kheaders archive in") && text.contains(why), "{text}");
    assert!(rss_mib <= 256, "khtest extract took {rss_mib} MiB on {bomb}: {text}");
    assert!(!d.path().join("k.tar.xz").exists(), "nothing may be written");
}

/// Eight streams of 48 MiB of zeros (384 MiB if all were kept), each within the payload limit: they
/// are unpacked one at a time, not all kept.
#[test]
fn many_payloads_are_searched_one_at_a_time() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 0);
    e.write_all(&vec![0u8; 48 << 20]).unwrap();
    let stream = e.finish().unwrap();
    let input = d.path().join("vmlinux");
    std::fs::write(&input, stream.repeat(8)).unwrap();
    let (code, text, rss_mib) = extract_measured(&input, &d.path().join("k.tar.xz"));
    assert_eq!(code, Some(4), "{text}");
    assert!(rss_mib <= 256, "khtest extract took {rss_mib} MiB on eight payloads: {text}");
}

#[test]
fn an_xz_bomb_of_zeros_is_refused_in_bounded_memory() {
    an_xz_bomb_is_refused_in_bounded_memory("zeros-1g.xz", "unpacks to more than 128 MiB");
}

#[test]
fn an_xz_bomb_shaped_like_the_archive_is_refused_in_bounded_memory() {
    an_xz_bomb_is_refused_in_bounded_memory("tar-1g.xz", "is a tar with include/linux/kconfig.h that unpacks to more than 512 MiB");
}

/// The object trees the cache holds: one per tree and build key.
fn object_trees(cache: &Path) -> usize {
    let Ok(trees) = std::fs::read_dir(cache.join("trees")) else { return 0 };
    trees
        .flatten()
        .filter(|t| t.path().is_dir())
        .flat_map(|t| std::fs::read_dir(t.path()).unwrap().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".khtest-build-"))
        .count()
}

#[test]
fn an_edit_deep_in_a_tree_dir_rebuilds_and_no_edit_does_not() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let deep = d.path().join("tree/arch/x86/include/asm/page.h");
    std::fs::create_dir_all(deep.parent().unwrap()).unwrap();
    std::fs::write(&deep, "#define PAGE_SHIFT 12\n").unwrap();
    let matrix = d.path().join("configs/matrix.yaml");
    let tree = d.path().join("tree");
    let run = || {
        let out = khtest(&["--matrix", matrix.to_str().unwrap(), "run", "broken", "--tree", tree.to_str().unwrap()], d.path());
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        object_trees(&d.path().join("cache"))
    };
    assert_eq!(run(), 1);
    assert_eq!(run(), 1, "nothing changed: the same build");
    std::fs::write(&deep, "#define PAGE_SHIFT 14\n").unwrap();
    assert_eq!(run(), 2, "an edit deep in the tree must build anew");
}
