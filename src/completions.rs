//! `agentuser completions SHELL`: clap_complete's script for the shell, plus completion of
//! agent names, which the script asks of `agentuser list --names` (the caller's own agents,
//! as `list` shows them; nothing else is run).
//!
//! Which words are agent names is read off the CLI definition: the first positional
//! argument `name` of a subcommand (or of a `cred` subcommand), `create` aside.
#![forbid(unsafe_code)]

use std::io::Write;

use clap_complete::Shell;

use crate::cli::{self, CompletionShell};

/// Prints the script; returns the exit status.
pub fn print(shell: CompletionShell) -> u8 {
    let script = script(shell);
    let mut out = std::io::stdout().lock();
    match out.write_all(script.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("agentuser: completions: writing the script: {e}");
            1
        }
    }
}

/// The whole script for `shell`.
pub fn script(shell: CompletionShell) -> String {
    let mut cmd = cli::command();
    let mut buffer = Vec::new();
    let generator = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    clap_complete::generate(generator, &mut cmd, "agentuser", &mut buffer);
    let base = String::from_utf8_lossy(&buffer).into_owned();
    let layout = Layout::of(&cli::command());
    match shell {
        CompletionShell::Bash => format!("{base}{}", bash_names(&layout)),
        CompletionShell::Zsh => zsh_names(&base),
        CompletionShell::Fish => format!("{base}{}", fish_names(&layout)),
    }
}

/// Where agent names go on the command line.
struct Layout {
    /// Subcommands whose first positional argument is the agent's name.
    direct: Vec<String>,
    /// Subcommand groups (`cred`) whose subcommands take the name first.
    nested: Vec<String>,
    /// Long options that take a value (their value is not a positional word).
    valued: Vec<String>,
}

impl Layout {
    fn of(cmd: &clap::Command) -> Layout {
        // Argument details (how many values) are settled by building.
        let mut cmd = cmd.clone();
        cmd.build();
        let mut layout = Layout {
            direct: Vec::new(),
            nested: Vec::new(),
            valued: Vec::new(),
        };
        for sub in cmd.get_subcommands() {
            // `create` takes a new name: nothing to complete.
            if sub.get_name() == "create" {
            } else if names_first(sub) {
                layout.direct.push(sub.get_name().to_owned());
            } else if sub.get_subcommands().any(names_first) {
                layout.nested.push(sub.get_name().to_owned());
            }
            let subs = std::iter::once(sub).chain(sub.get_subcommands());
            for arg in subs.flat_map(clap::Command::get_arguments) {
                let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
                if let (Some(long), true) = (arg.get_long(), takes_value) {
                    let long = format!("--{long}");
                    if !layout.valued.contains(&long) {
                        layout.valued.push(long);
                    }
                }
            }
        }
        layout
    }
}

fn names_first(cmd: &clap::Command) -> bool {
    cmd.get_positionals()
        .next()
        .is_some_and(|a| a.get_id() == "name")
}

fn bash_names(layout: &Layout) -> String {
    format!(
        r#"
# Agent names (agentuser list --names: your own agents) where a subcommand takes one.
_agentuser_names() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} i word skip=0 want=-1
    local -a words=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if ((skip)); then skip=0; continue; fi
        case $word in
            --) _agentuser "$@"; return ;;
            {valued}) skip=1 ;;
            -*) ;;
            *) words+=("$word") ;;
        esac
    done
    case ${{words[0]-}} in
        {direct}) want=1 ;;
        {nested}) want=2 ;;
    esac
    if [[ $cur != -* && ${{#words[@]}} -eq $want ]]; then
        COMPREPLY=($(compgen -W "$(agentuser list --names 2>/dev/null)" -- "$cur"))
        return 0
    fi
    _agentuser "$@"
}}
complete -F _agentuser_names -o bashdefault -o default agentuser
"#,
        valued = layout.valued.join("|"),
        direct = layout.direct.join("|"),
        nested = layout.nested.join("|"),
    )
}

fn zsh_names(base: &str) -> String {
    const FUNCTION: &str = r#"
# Agent names (agentuser list --names: your own agents).
(( $+functions[_agentuser_agents] )) ||
_agentuser_agents() {
    local -a names
    names=(${(f)"$(agentuser list --names 2>/dev/null)"})
    _describe -t agents 'agent' names
}
"#;
    let body = base.replace(
        ":name -- Agent name:_default'",
        ":name -- Agent name:_agentuser_agents'",
    );
    match body.split_once('\n') {
        Some((first, rest)) => format!("{first}\n{FUNCTION}{rest}"),
        None => body,
    }
}

fn fish_names(layout: &Layout) -> String {
    let names = "(agentuser list --names 2>/dev/null)";
    format!(
        "\n# Agent names (agentuser list --names: your own agents).\n\
         complete -c agentuser -n '__fish_seen_subcommand_from {}; and test (count (commandline -opc)) -eq 2' -f -a '{names}'\n\
         complete -c agentuser -n '__fish_seen_subcommand_from {}; and test (count (commandline -opc)) -eq 3' -f -a '{names}'\n",
        layout.direct.join(" "),
        layout.nested.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_names_the_commands_that_take_an_agent() {
        let layout = Layout::of(&cli::command());
        for sub in [
            "delete", "show", "share", "unshare", "exec", "shell", "audit", "set", "net",
        ] {
            assert!(
                layout.direct.iter().any(|s| s == sub),
                "{sub}: {:?}",
                layout.direct
            );
        }
        assert!(!layout.direct.iter().any(|s| s == "create" || s == "list"));
        assert_eq!(layout.nested, ["cred"]);
        for option in ["--cwd", "--env", "--network", "--to", "--owner"] {
            assert!(layout.valued.iter().any(|o| o == option), "{option}");
        }
        assert!(!layout.valued.iter().any(|o| o == "--json" || o == "--rw"));
        let zsh = script(CompletionShell::Zsh);
        assert!(zsh.starts_with("#compdef agentuser\n"));
        assert!(zsh.contains(":name -- Agent name:_agentuser_agents'"));
        assert!(!zsh.contains(":name -- Agent name:_default'"));
    }
}
