//! The incident response plan as code: `levee runbook` and the README's "When levee alerts"
//! section say the same, rule for rule.

use std::process::Command;

#[test]
fn runbook_command_and_readme_are_in_step() {
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .arg("runbook")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8(out.stdout).unwrap();
    for rule in levee::observe::rules::RULE_NAMES {
        assert!(
            printed.contains(&format!("#### `{rule}`")),
            "{rule} has a runbook"
        );
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = "<!-- runbook:start -->\n";
    let a = readme
        .find(start)
        .expect("README has the runbook start marker")
        + start.len();
    let b = readme
        .find("<!-- runbook:end -->")
        .expect("README has the runbook end marker");
    assert_eq!(
        &readme[a..b],
        printed,
        "README's \"When levee alerts\" differs from `levee runbook`: paste the command's output between the markers"
    );
}

#[test]
fn the_readme_observe_example_is_a_valid_config() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```toml\n[journal]")
        .expect("README has the observe example")
        + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let text = format!(
        "[pools.web]\nservers = [\"127.0.0.1:9001\"]\n{}",
        &readme[start..end]
    );
    let cfg =
        levee::config::Config::parse(&text, "README.md", Some(std::path::Path::new("/etc/levee")))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.observe.journal.as_ref().unwrap().path,
        std::path::Path::new("/etc/levee/levee-journal.db")
    );
    assert_eq!(cfg.observe.notifiers.len(), 2);
    assert_eq!(
        cfg.observe.alert("error_ratio").unwrap().threshold,
        Some(0.02)
    );
}
