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

/// The README is the front door: short, and every relative link in it (and
/// in `docs/`) leads to a file of the repository, a heading included.
#[test]
fn the_readme_is_short_and_every_link_resolves() {
    let root = Project::locate().root;
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.lines().count() < 200, "README.md has {} lines: move detail to docs/", readme.lines().count());
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs")).unwrap().map(|e| e.unwrap().path()).collect();
    docs.push(root.join("README.md"));
    let mut broken = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for link in markdown_links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() { doc.clone() } else { doc.parent().unwrap().join(file) };
            let ok = target.exists()
                && (anchor.is_empty() || std::fs::read_to_string(&target).is_ok_and(|t| t.lines().any(|l| l.starts_with('#') && slug(l) == anchor)));
            if !ok {
                broken.push(format!("{}: {link}", doc.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    assert!(broken.is_empty(), "links that lead nowhere:\n{}", broken.join("\n"));
}

/// The targets of `[text](target)` links.
fn markdown_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            links.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    links
}

/// GitHub's anchor for a heading line.
fn slug(heading: &str) -> String {
    let title = heading.trim_start_matches('#').trim().to_lowercase();
    title.chars().filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_').map(|c| if c == ' ' { '-' } else { c }).collect()
}
