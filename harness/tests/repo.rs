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
    assert!(
        readme.lines().any(|l| l.trim() == command),
        "README.md does not show .ci/run's command {command:?} on a line of its own"
    );
}

#[test]
fn the_default_matrix_loads() {
    let p = Project::locate();
    khtest::matrix::Matrix::load(&p.default_matrix()).unwrap();
}
