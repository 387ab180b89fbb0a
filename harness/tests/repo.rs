//! Checks on the repository itself.

use khtest::Project;

/// CI must prove what a new user runs: `.ci/run` runs the README's test
/// command, verbatim.
#[test]
fn readme_and_ci_run_the_same_test_command() {
    let root = Project::locate().root;
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let command = ci.lines().last().unwrap().trim();
    assert!(command.contains("cargo nextest run"), ".ci/run's last line is not the test command: {command}");
    assert!(readme.lines().any(|l| l.trim() == command), "README.md does not show .ci/run's command {command:?} on a line of its own");
    // The house rules are part of what CI proves.
    for rule in ["cargo fmt --all --check", "cargo clippy --workspace --all-targets -- -D warnings"] {
        assert!(command.contains(rule), "the test command does not run `{rule}`: {command}");
    }
}

#[test]
fn the_default_matrix_loads() {
    let p = Project::locate();
    khtest::matrix::Matrix::load(&p.default_matrix()).unwrap();
}

/// The nightly workflow must stay valid; `scripts/setup-host.sh` installs
/// actionlint (it also runs shellcheck on the `run:` steps when present).
#[test]
fn the_nightly_workflow_passes_actionlint() {
    let root = Project::locate().root;
    let actionlint = std::path::Path::new("/usr/local/lib/khtest/venv/bin/actionlint");
    assert!(actionlint.exists(), "{} is missing: run scripts/setup-host.sh", actionlint.display());
    let out =
        std::process::Command::new(actionlint).arg("-no-color").arg(root.join(".github/workflows/nightly.yml")).current_dir(&root).output().unwrap();
    assert!(out.status.success(), "actionlint:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
