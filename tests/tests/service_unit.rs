//! `examples/strata.service` as systemd reads it: `systemd-analyze verify`
//! accepts it without a single warning, `systemd-analyze security` scores
//! it as docs/configuration.md says, and every directive in it is explained
//! there. systemd need not be running (it is not PID 1 on the test
//! machines): both commands read the file.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use strata_e2e::*;

fn unit_text() -> String {
    std::fs::read_to_string(repo_root().join("examples/strata.service")).expect("examples/strata.service")
}

/// `systemd-analyze verify FILE`: (success, everything it printed).
fn verify(file: &Path) -> (bool, String) {
    let out = run(Command::new(require_tool("systemd-analyze")).arg("verify").arg(file).current_dir("/"), Duration::from_secs(60));
    (out.success(), format!("{}{}", out.stdout, out.stderr).trim().to_string())
}

/// verify checks that `ExecStart`'s program exists, so the copy checked
/// runs the built binary instead of /usr/local/bin/strata. verify exits 0
/// on unknown keys and bad values (it only warns), so silence is the test;
/// a copy with one bad value shows that the check can fail.
#[test]
fn systemd_analyze_verify_accepts_the_unit_without_a_warning() {
    let text = unit_text();
    assert!(text.contains("ExecStart=/usr/local/bin/strata serve"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("strata.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/strata", &strata_bin().display().to_string())).unwrap();
    let (ok, said) = verify(&unit);
    assert!(ok && said.is_empty(), "systemd-analyze verify: {said}");

    let broken = dir.path().join("broken.service");
    std::fs::write(&broken, std::fs::read_to_string(&unit).unwrap().replace("ProtectSystem=strict", "ProtectSystem=stricter")).unwrap();
    let (_, said) = verify(&broken);
    assert!(said.contains("stricter"), "verify reports a bad value: {said}");
}

/// The exposure score `systemd-analyze security --offline=true` gives:
/// low ("OK" is below 2), and, with the systemd the docs name, the very
/// number they write.
#[test]
fn systemd_analyze_security_scores_the_unit_as_documented() {
    let analyze = require_tool("systemd-analyze");
    let out = run(
        Command::new(&analyze).args(["security", "--offline=true"]).arg(repo_root().join("examples/strata.service")).current_dir("/"),
        Duration::from_secs(60),
    )
    .assert_ok();
    let line = out.stdout.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no score: {out}"));
    let mut words = line.rsplit(':').next().unwrap().split_whitespace();
    let (score, label) = (words.next().unwrap(), words.next().unwrap());
    eprintln!("{line}");
    assert!(score.parse::<f64>().unwrap() < 2.0, "{line}");
    let version = run(Command::new(&analyze).arg("--version"), Duration::from_secs(10)).assert_ok();
    if version.stdout.starts_with("systemd 252 ") {
        let docs = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
        assert!(docs.contains(&format!("**{score} \"{label}\"**")), "docs/configuration.md gives the score {score} {label}");
    }
}

/// Every directive of the unit (commented ones too) has its row in
/// docs/configuration.md's table.
#[test]
fn every_line_of_the_unit_is_explained_in_the_docs() {
    let docs = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    let start = docs.find("### The unit, line by line").expect("the section");
    let section = &docs[start..];
    let table = &section[..section[4..].find("\n### ").map_or(section.len(), |e| e + 4)];
    let mut missing = Vec::new();
    for line in unit_text().lines() {
        let directive = line.trim_start_matches("# ");
        let Some((key, _)) = directive.split_once('=') else { continue };
        if key.contains(' ') || key.starts_with('#') || key.is_empty() {
            continue;
        }
        let named = table.contains(&format!("`{key}=")) || table.contains(&format!("`# {key}="));
        if !named {
            missing.push(line.to_string());
        }
    }
    assert!(missing.is_empty(), "not explained in docs/configuration.md: {missing:#?}");
}
