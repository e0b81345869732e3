//! Documentation moves with behaviour: the man pages are generated from the CLI definition
//! and must be current; the config page and the example config name every key.
//!
//! Regenerate after changing src/cli.rs: `UPDATE_MAN=1 cargo test --test docs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man")
}

/// agentuser.1 plus one page per subcommand (agentuser-create.1, agentuser-cred-add.1, ...).
fn rendered_pages() -> BTreeMap<String, String> {
    let mut cmd = agentuser::cli::command();
    cmd.build();
    let mut pages = BTreeMap::new();
    render(&cmd, "agentuser", &mut pages);
    pages
}

fn render(cmd: &clap::Command, page: &str, pages: &mut BTreeMap<String, String>) {
    let mut buffer = Vec::new();
    let name: &'static str = Box::leak(page.to_string().into_boxed_str());
    clap_mangen::Man::new(cmd.clone().name(name))
        .title(page.to_uppercase())
        .section("1")
        .source(format!("agentuser {}", env!("CARGO_PKG_VERSION")))
        .manual("agentuser manual")
        .render(&mut buffer)
        .unwrap();
    pages.insert(format!("{page}.1"), String::from_utf8(buffer).unwrap());
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        render(sub, &format!("{page}-{}", sub.get_name()), pages);
    }
}

#[test]
fn man_pages_are_current() {
    let pages = rendered_pages();
    if std::env::var_os("UPDATE_MAN").is_some() {
        for (name, text) in &pages {
            std::fs::write(man_dir().join(name), text).unwrap();
        }
    }
    for (name, text) in &pages {
        let on_disk = std::fs::read_to_string(man_dir().join(name)).unwrap_or_default();
        assert!(
            on_disk == *text,
            "man/{name} is stale: run `UPDATE_MAN=1 cargo test --test docs` and commit"
        );
    }
    for entry in std::fs::read_dir(man_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".1") {
            assert!(
                pages.contains_key(&name),
                "man/{name} documents no current command"
            );
        }
    }
}

#[test]
fn man_pages_name_every_subcommand_and_flag() {
    let all: String = std::fs::read_dir(man_dir())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let mut cmd = agentuser::cli::command();
    cmd.build();
    let mut stack = vec![cmd];
    let mut checked = 0;
    while let Some(cmd) = stack.pop() {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            // roff escapes dashes in names too: git\-remote\-helper
            let roff = sub.get_name().replace('-', "\\-");
            assert!(
                all.contains(sub.get_name()) || all.contains(&roff),
                "no man page mentions {}",
                sub.get_name()
            );
            stack.push(sub.clone());
        }
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long() {
                // roff escapes the dashes: \-\-keep\-home
                let roff = format!("\\-\\-{}", long.replace('-', "\\-"));
                assert!(all.contains(&roff), "no man page mentions --{long}");
                checked += 1;
            }
        }
    }
    assert!(checked > 10, "walked only {checked} flags");
}

#[test]
fn config_documentation_names_every_key() {
    let page = std::fs::read_to_string(man_dir().join("agentuser.toml.5")).unwrap();
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/config.toml"))
            .unwrap();
    let keys = agentuser::config::Config::keys();
    assert!(keys.len() >= 10);
    for key in keys {
        assert!(
            page.contains(&key),
            "agentuser.toml.5 does not document {key}"
        );
        assert!(
            example.contains(&format!("#{key} = ")),
            "etc/config.toml lacks {key}"
        );
    }
}

#[test]
fn example_config_uncommented_is_valid_and_the_default() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/config.toml"))
            .unwrap();
    let uncommented: String = example
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let parsed = agentuser::config::Config::parse(&uncommented).unwrap();
    let default = agentuser::config::Config::default();
    assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
}

#[test]
fn ci_runs_the_readme_test_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let command = ci.lines().last().unwrap().trim();
    assert!(
        readme.contains(&format!("\n{command}\n")),
        "README.md does not show the test command `{command}` that .ci/run runs"
    );
}
