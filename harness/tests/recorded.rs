//! The parsers against output recorded from real runs, kept in
//! `test_data/` (as kunit_tool keeps its `test_data/`): guest consoles,
//! kbuild and modpost output, kselftest TAP, failed kernel builds. Each
//! test asserts what a person reading the verdict needs to see.

use std::path::{Path, PathBuf};

use kheaders_selftest::modbuild;
use khtest::console::{Console, ConsoleError, Output};
use khtest::report::Verdict;
use khtest::{buildlog, checks, clients, device, symvers, tap};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data").join(rel)
}

fn text(rel: &str) -> String {
    std::fs::read_to_string(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A recorded console, replayed: commands go nowhere, and the guest's
/// answers come in the order they were recorded.
fn replay(rel: &str) -> Console<std::io::Sink> {
    let file = std::fs::File::open(fixture(rel)).unwrap();
    Console::new(file, std::io::sink(), std::io::sink())
}

const LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The next command's output, as the cell sent it.
fn next(console: &mut Console<std::io::Sink>) -> Output {
    let seq = console.send("(recorded)").unwrap();
    console.wait_done(seq, LIMIT).unwrap()
}

#[test]
fn an_m_modversions_guest_serves_the_archive_only_while_kheaders_ko_is_loaded_and_refuses_the_module() {
    let mut c = replay("console/x86_64-m-modversions.log");
    let ready = c.wait_line(LIMIT, |l| l.starts_with("KHTEST-READY")).unwrap();
    assert_eq!(ready, "KHTEST-READY 6.12.117");
    let paths = ["/sys/kernel/kheaders.tar.xz", "/proc/kheaders.tar.xz"];
    // stat before insmod kheaders.ko: nothing served.
    assert_eq!(checks::served_sizes(&checks::parse_stat(&next(&mut c).text), &[], 0), Verdict::Pass);
    assert_eq!(next(&mut c).status, 0, "insmod kheaders.ko");
    let served = checks::parse_stat(&next(&mut c).text);
    assert_eq!(checks::served_sizes(&served, &paths, 4_950_772), Verdict::Pass);
    assert!(matches!(checks::served_sizes(&served, &paths, 4_950_773), Verdict::Fail(m) if m.contains("is 4950772 bytes")));
    // The pull's size, its transfer, rmmod, stat again, the push of test.ko and its check.
    assert!(next(&mut c).text.contains("KHTEST-SIZE 4950772"));
    for _ in 5..=9 {
        next(&mut c);
    }
    let refused = next(&mut c);
    assert_ne!(refused.status, 0);
    assert_eq!(checks::refused_without_versions(refused.status, &refused.text), Verdict::Pass, "{}", refused.text);
    // `reboot -f`: the console ends without an answer.
    let seq = c.send("reboot -f").unwrap();
    assert!(matches!(c.wait_done(seq, LIMIT), Err(ConsoleError::Closed("console"))));
}

#[test]
fn an_arm64_guest_loads_and_unloads_the_test_module() {
    let mut c = replay("console/arm64-y-o.log");
    c.wait_line(LIMIT, |l| l.starts_with("KHTEST-READY")).unwrap();
    let served = checks::parse_stat(&next(&mut c).text);
    assert_eq!(checks::served_sizes(&served, &["/sys/kernel/kheaders.tar.xz", "/proc/kheaders.tar.xz"], 4_764_904), Verdict::Pass);
    for _ in 2..=5 {
        next(&mut c);
    }
    let insmod = next(&mut c);
    assert_eq!(checks::kernel_log_has("insmod", &insmod.text, checks::HELLO), Verdict::Pass);
    assert!(matches!(checks::kernel_log_has("insmod", &insmod.text, checks::GOODBYE), Verdict::Fail(_)));
    assert_eq!(checks::kernel_log_has("rmmod", &next(&mut c).text, checks::GOODBYE), Verdict::Pass);
}

#[test]
fn the_kselftest_passes_with_module_build_files_and_headers_only() {
    let t = "kheaders: run_kheaders_modbuild.sh";
    assert_eq!(checks::kselftest_tap(&text("kselftest/x86_64-y-o.log"), t), Verdict::Pass);
    // Mainline's headers-only archive: the module subtests skip, with why.
    let mainline = text("kselftest/x86_64-unpatched.log");
    assert_eq!(checks::kselftest_tap(&mainline, t), Verdict::Pass);
    assert!(mainline.contains("# ok 3 module builds against the archive # SKIP headers-only archive (no Makefile)"));
    // Another test's line is no result for this one.
    assert!(matches!(checks::kselftest_tap(&mainline, "kheaders: other.sh"), Verdict::Fail(m) if m.contains("no result line")));
}

/// The one TAP reader on what the device printed (arm64-y-o): the
/// kselftest runner's TAP with the test's nested under `# `, and the port's
/// KTAP. Both judges read through it.
#[test]
fn the_device_tap_of_the_kselftest_and_the_port_is_read_and_judged() {
    let runner = text("tap/arm64-y-o-device-kselftest.log");
    let outer = tap::parse(&runner, "");
    assert_eq!(outer.plan, Some(tap::Plan { count: 1, skip: None }));
    assert_eq!(outer.results[0].name, "selftests: kheaders: run_kheaders_modbuild.sh");
    assert!(outer.results[0].diag.iter().any(|d| d == "timeout set to 600"));
    let inner = tap::parse(&runner, "# ");
    let names: Vec<&str> = inner.results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["archive extracts", "archive has no Module.symvers", "module builds against the archive", "module loads"]);
    assert!(inner.result(4).unwrap().diag.iter().any(|d| d.contains("\"_printk\"") && d.ends_with("undefined!")));
    let port = text("tap/arm64-y-o-device-port.log");
    let ktap = tap::parse(&port, "");
    assert_eq!(ktap.plan.map(|p| p.count), Some(4));
    assert!(ktap.results.iter().all(|r| r.ok && r.directive.is_none()));
    // The same outputs, judged as the device lane judges them.
    assert_eq!(device::judge("kselftest", &runner, "# ", device::Expect::Loads), Verdict::Pass);
    assert_eq!(device::judge("port", &port, "", device::Expect::Loads), Verdict::Pass);
    assert!(matches!(device::judge("port", &port, "", device::Expect::Refused), Verdict::Fail(m) if m.contains("result 4")));
    // The host's judge reads the runner's line through the same reader.
    assert_eq!(checks::kselftest_tap(&runner, "kheaders: run_kheaders_modbuild.sh"), Verdict::Pass);
    let broken = runner.replace("# ok 3 module builds", "# not ok 3 module builds").replace("ok 1 selftests", "not ok 1 selftests");
    let v = checks::kselftest_tap(&broken, "kheaders: run_kheaders_modbuild.sh");
    assert!(matches!(&v, Verdict::Fail(m) if m.starts_with("not ok 1 selftests") && m.contains("\n  not ok 3 module builds")), "{v:?}");
}

#[test]
fn a_modversions_device_loads_with_the_served_versions_and_refuses_a_changed_crc() {
    // x86_64-m-modversions, 6.12 series with its patch 11.
    let runner = text("tap/x86_64-m-modversions-device-kselftest.log");
    assert_eq!(device::judge("kselftest", &runner, "# ", device::Expect::LoadsWithVersions), Verdict::Pass);
    let v = device::judge("kselftest", &runner, "# ", device::Expect::Loads);
    assert!(matches!(&v, Verdict::Fail(m) if m.contains("result 4 is 'module loads, with the symbol versions the kernel serves'")), "{v:?}");
    // Recorded at commit 2408e6e: result 2 loads the recipe's module.
    let log = text("tap/x86_64-m-modversions-device-symvers.log");
    assert_eq!(symvers::judge_device(&log), Verdict::Pass);
    assert!(log.contains("# /sys/module/test/taint: OE") && log.contains("test: disagrees about version of symbol _printk"));
    assert!(log.contains("test: no symbol version for module_layout"));
    // The refusal not seen: insmod took the module with the wrong CRC.
    let accepted = log.replace("ok 3 built after", "not ok 3 built after");
    assert!(matches!(symvers::judge_device(&accepted), Verdict::Fail(m) if m.contains("not ok 3 built after _printk's CRC was changed")));
    // The log of a run before result 4: three results, one missing.
    let three = log.replace("1..4", "1..3").split("# WARNING: Module.symvers").next().unwrap().to_owned();
    assert!(matches!(symvers::judge_device(&three), Verdict::Fail(_)), "{three}");
}

#[test]
fn dkms_on_the_device_is_read_and_judged_and_a_broken_step_quotes_dkms() {
    let log = text("tap/x86_64-m-o-clients-dkms.log");
    assert_eq!(clients::judge_dkms(&log, device::Expect::Loads), Verdict::Pass);
    let names: Vec<String> = tap::parse(&log, "").results.iter().map(|r| r.name.clone()).collect();
    assert!(names.contains(&"dkms build vpoll/0.1.1".to_owned()) && names.contains(&"vpoll works".to_owned()), "{names:?}");
    // The same run with vpoll's events not seen: a FAIL quoting vpoll-check.
    let broken = log.replace("0x3 raised", "0x0 raised").replace("ok 12 vpoll works", "not ok 12 vpoll works");
    let v = clients::judge_dkms(&broken, device::Expect::Loads);
    assert!(matches!(&v, Verdict::Fail(m) if m.contains("not ok 12 vpoll works") && m.contains("0x0 raised")), "{v:?}");
    // A module-build run is not what a headers-only archive must give.
    assert!(matches!(clients::judge_dkms(&log, device::Expect::HeadersOnly), Verdict::Fail(m) if m.contains("must refuse")));
    // The arm64 device, its own userland's dkms and gcc: the same steps.
    assert_eq!(clients::judge_dkms(&text("tap/arm64-y-o-clients-dkms.log"), device::Expect::Loads), Verdict::Pass);
}

#[test]
fn dkms_refuses_the_headers_only_baseline_with_its_own_reason() {
    // x86_64-unpatched: kheaders install refuses, dkms build says why.
    let log = text("tap/x86_64-unpatched-clients-dkms.log");
    assert_eq!(clients::judge_dkms(&log, device::Expect::HeadersOnly), Verdict::Pass);
    let v = clients::judge_dkms(&log, device::Expect::Loads);
    assert!(matches!(&v, Verdict::Fail(m) if m.contains("not ok 3 dkms build") && m.contains("cannot be found")), "{v:?}");
}

#[test]
fn bcc_sees_the_event_and_loads_kheaders_ko_itself_in_a_module_cell() {
    let log = text("tap/x86_64-m-o-clients-bcc.log");
    assert_eq!(clients::judge_bcc(&log), Verdict::Pass);
    assert!(log.contains("absent (kheaders.ko not loaded)") && log.contains("after loading kheaders.ko itself"));
    assert!(clients::bcc_seconds(&log).is_some_and(|s| s > 0.0));
    // The same run with result 3 not ok: a FAIL quoting it.
    let wrong = log.replace("ok 3 sees", "not ok 3 sees");
    assert!(matches!(clients::judge_bcc(&wrong), Verdict::Fail(m) if m.contains("not ok 3 sees")));
}

#[test]
fn bcc_on_a_kernel_without_the_bpf_syscall_fails_quoting_bccs_reason() {
    // arm64-y-o without the clients fragment: bcc unpacked the archive and
    // compiled against it, and its own helpers refused the kernel.
    let log = text("tap/arm64-y-o-clients-bcc-no-bpf-syscall.log");
    let v = clients::judge_bcc(&log);
    assert!(matches!(&v, Verdict::Fail(m) if m.contains("CONFIG_BPF_SYSCALL is undefined") && m.contains("not ok 1 bcc compiles")), "{v:?}");
    assert_eq!(clients::bcc_seconds(&log), None, "no program was loaded, so there is no time");
}

#[test]
fn modpost_warns_of_the_missing_module_symvers_and_nothing_is_an_error() {
    for (log, undefined) in [("modbuild/x86_64-y-o.log", &["_printk"][..]), ("modbuild/x86_64-m-modversions.log", &["_printk", "module_layout"])] {
        let (warnings, errors) = modbuild::classify(&text(log));
        assert!(errors.is_empty(), "{log}: {errors:?}");
        assert!(warnings.iter().any(|w| w == "WARNING: Module.symvers is missing."), "{log}: {warnings:?}");
        for sym in undefined {
            assert!(warnings.iter().any(|w| w.starts_with(&format!("WARNING: modpost: \"{sym}\"")) && w.ends_with("undefined!")), "{log}: {sym}");
        }
        assert!(buildlog::first_failure(&text(log)).lines.is_empty(), "{log}: a build that passed has no failure");
    }
}

/// What the verdict of a kernel build that failed with `log` quotes.
fn quoted(rel: &str) -> (Vec<String>, Option<usize>, String) {
    use std::os::unix::process::ExitStatusExt;
    let f = buildlog::first_failure(&text(rel));
    assert_eq!(f.host_fault, None, "{rel}");
    let failed = khtest::kbuild::MakeFailed {
        args: "-j3".into(),
        status: std::process::ExitStatus::from_raw(2 << 8),
        log: fixture(rel),
        failure: f.clone(),
        tail: String::new(),
    };
    (f.lines, f.line, failed.to_string())
}

#[test]
fn arch_for_srcarch_is_quoted_by_the_find_that_failed() {
    let (lines, line, verdict) = quoted("build-logs/arch.log");
    assert_eq!(lines, ["find: 'arch/x86_64': No such file or directory", "make[4]: *** [../kernel/Makefile:164: kernel/kheaders.list] Error 1"]);
    assert_eq!(line, Some(464));
    assert!(
        verdict.starts_with(
            "`make -j3` failed (exit status: 2); first errors (arch.log line 464):\n    find: 'arch/x86_64': No such file or directory\n"
        ),
        "{verdict}"
    );
}

#[test]
fn the_pristine_tree_cycle_is_quoted_by_makes_no_rule() {
    let (lines, _, _) = quoted("build-logs/pristine.log");
    assert_eq!(lines, ["make[3]: *** No rule to make target 'Module.symvers', needed by 'kernel/kheaders_data.tar.xz'.  Stop."]);
}

#[test]
fn a_compiler_error_is_quoted_with_its_file_and_line() {
    let (lines, _, _) = quoted("build-logs/cc.log");
    assert!(lines[0].starts_with("../kernel/kheaders.c:90:9: error: expected '=', ',', ';'"), "{lines:?}");
    assert_eq!(lines.last().unwrap(), "make[4]: *** [../scripts/Makefile.build:234: kernel/kheaders.o] Error 1");
    assert!(lines.len() <= 4, "{lines:?}");
}

#[test]
fn a_link_error_is_quoted_with_the_missing_symbol_and_the_object() {
    let (lines, _, _) = quoted("build-logs/ld.log");
    assert_eq!(
        lines,
        [
            "ld: kernel/kheaders.o: in function `ikheaders_init':",
            "kheaders.c:(.init.text+0x11): undefined reference to `khtest_undefined'",
            "make[3]: *** [../scripts/Makefile.vmlinux:34: vmlinux] Error 1",
        ]
    );
}

#[test]
fn a_panic_at_boot_ends_the_wait_for_the_shell_with_the_panic_text() {
    let mut c = replay("console/panic-at-boot.log");
    let e = c.wait_line(LIMIT, |l| l.starts_with("KHTEST-READY")).unwrap_err();
    let ConsoleError::Crash(text) = e else { panic!("{e:?}") };
    assert!(text.starts_with("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"), "{text}");
    assert!(!text.contains("khtest: init exits"), "what came before the panic is not its text: {text}");
}
