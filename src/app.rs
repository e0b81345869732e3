//! Start-up discipline of the setuid helper and command dispatch.
//!
//! Order matters (docs/design.md section 2, docs/threat-model.md rows 5 and 18):
//! 1. make sure fds 0-2 are open; take the environment out of the process;
//! 2. parse the command line;
//! 3. record who the caller is, then become fully root and reset limits;
//! 4. load the fixed config and the registry; refuse agent callers;
//! 5. run the command; log it if it was refused (docs/threat-model.md row 26).
#![forbid(unsafe_code)]

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Command, CredCommand, ExecArgs, NetAction, NetArgs, ShareArgs, ShellArgs};
use crate::config::Config;
use crate::context::Caller;
use crate::context::{CallerEnv, Context};
use crate::error::{exit_code, print_error};
use crate::policy;
use crate::registry::Registry;
use crate::share::Access;
use crate::sys::{process, signals};
use crate::{audit, creds, eventlog, provision, runner, share, show};

pub fn main() -> u8 {
    process::ensure_std_fds();
    // Before anything else: a stopped helper would hold its locks (docs/threat-model.md row 18).
    if let Err(err) = signals::ignore_job_control() {
        print_error(&err);
        return 1;
    }
    let caller_env = CallerEnv::new(process::take_environment());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    // Needs nothing of the host: printed before any privileged step.
    if let Command::Completions { shell } = cli.command {
        return crate::completions::print(shell);
    }
    // Commands that change state finish their step, or stop at a safe point, on a hang-up
    // or interrupt (before any thread exists, so the share walk's threads inherit it).
    if changes_state(&cli.command) {
        if let Err(err) = signals::defer_interrupts() {
            print_error(&err);
            return 1;
        }
    }
    let command_word = command_word(&cli.command);
    // exec and shell report their own failures with 125 (env(1) convention).
    let setup_failure = match cli.command {
        Command::Exec(_) | Command::Shell(_) => runner::EXIT_SETUP_FAILED,
        _ => 1,
    };
    let ctx = match setup(caller_env, command_word) {
        Ok(ctx) => ctx,
        Err(err) => {
            print_error(&err);
            return setup_failure;
        }
    };
    // Requests the helper refuses are logged like sudo's (exec and shell log their own).
    let agent = agent_of(&cli.command).map(str::to_owned);
    let refused = |err: &anyhow::Error| {
        if exit_code(err) != 2 {
            eventlog::refused(&ctx.caller, command_word, agent.as_deref(), err);
        }
        print_error(err);
    };
    if let Err(err) = policy::refuse_agent_callers(&ctx) {
        refused(&err);
        return setup_failure;
    }
    // Before the command locks or reads the agent: other owners' agents do not exist for
    // non-root callers.
    if let Some(name) = agent.as_deref() {
        let creating = matches!(cli.command, Command::Create { .. });
        if let Err(err) = policy::refuse_hidden(&ctx, name, creating) {
            refused(&err);
            return setup_failure;
        }
    }
    match dispatch(&ctx, cli.command) {
        Ok(code) => code,
        Err(err) => {
            refused(&err);
            exit_code(&err)
        }
    }
}

/// Whether a command may change the registry, an account, a home or an ACL.
fn changes_state(command: &Command) -> bool {
    !matches!(
        command,
        Command::List { .. }
            | Command::Show { .. }
            | Command::Completions { .. }
            | Command::Delete { dry_run: true, .. }
            | Command::Unshare { dry_run: true, .. }
            | Command::Audit { .. }
            | Command::Doctor { .. }
            | Command::Cred(CredCommand::List { .. })
            | Command::Net(NetArgs {
                action: NetAction::List { .. } | NetAction::Log,
                ..
            })
    )
}

/// The subcommand as one word, for lock notes and logs.
fn command_word(command: &Command) -> &'static str {
    match command {
        Command::Create { .. } => "create",
        Command::Delete { .. } => "delete",
        Command::List { .. } => "list",
        Command::Show { .. } => "show",
        Command::Share(_) => "share",
        Command::Unshare { .. } => "unshare",
        Command::Set { .. } => "set",
        Command::Unset { .. } => "unset",
        Command::Completions { .. } => "completions",
        Command::Cred(CredCommand::Add { .. }) => "cred add",
        Command::Cred(CredCommand::Env { .. }) => "cred env",
        Command::Cred(CredCommand::Ssh { .. }) => "cred ssh",
        Command::Cred(CredCommand::List { .. }) => "cred list",
        Command::Cred(CredCommand::Rm { .. }) => "cred rm",
        Command::Cred(CredCommand::Sync { .. }) => "cred sync",
        Command::Exec(_) => "exec",
        Command::Shell(_) => "shell",
        Command::Audit { .. } => "audit",
        Command::Doctor { .. } => "doctor",
        Command::GitRemoteHelper { .. } => "git-remote-helper",
        Command::Net(args) => match args.action {
            NetAction::Allow { .. } => "net allow",
            NetAction::Deny { .. } => "net deny",
            NetAction::List { .. } => "net list",
            NetAction::Log => "net log",
        },
    }
}

fn setup(caller_env: CallerEnv, command_word: &str) -> Result<Context> {
    let caller = Caller::identify(&caller_env)?;
    process::become_root()?;
    process::reset_limits()?;
    let config = Config::load()?;
    let holder = format!(
        "user={} uid={} command={command_word}",
        caller.name, caller.uid
    );
    let mut registry = Registry::open(&holder)?;
    if !caller.is_root {
        registry.warn_only_owner(caller.uid);
    }
    Ok(Context {
        caller,
        config,
        registry,
        caller_env,
    })
}

/// The agent a command names, if any.
fn agent_of(command: &Command) -> Option<&str> {
    match command {
        Command::Create { name, .. }
        | Command::Delete { name, .. }
        | Command::Show { name, .. }
        | Command::Unshare { name, .. }
        | Command::Set { name, .. }
        | Command::Unset { name, .. }
        | Command::Audit { name, .. } => Some(name),
        Command::Share(args) => Some(&args.name),
        Command::Cred(
            CredCommand::Add { name, .. }
            | CredCommand::Env { name, .. }
            | CredCommand::Ssh { name, .. }
            | CredCommand::List { name, .. }
            | CredCommand::Rm { name, .. }
            | CredCommand::Sync { name, .. },
        ) => Some(name),
        Command::Exec(args) => Some(&args.name),
        Command::Shell(args) => Some(&args.name),
        Command::Net(args) => Some(&args.name),
        Command::GitRemoteHelper { address, .. } => address.split_once(':').map(|(name, _)| name),
        Command::List { .. } | Command::Doctor { .. } | Command::Completions { .. } => None,
    }
}

fn dispatch(ctx: &Context, command: Command) -> Result<u8> {
    match command {
        Command::Create {
            name,
            owner,
            comment,
        } => provision::create(ctx, &name, owner.as_deref(), comment.as_deref())?,
        Command::Delete {
            name,
            keep_home,
            keep_owner,
            dry_run,
        } => {
            let how = provision::DeleteOptions {
                keep_home,
                keep_owner,
            };
            if dry_run {
                provision::delete_dry_run(ctx, &name, how)?
            } else {
                provision::delete(ctx, &name, how)?
            }
        }
        Command::List { json, names } => show::list(ctx, json, names)?,
        Command::Show { name, json } => show::show(ctx, &name, json)?,
        Command::Share(args) => share_command(ctx, &args)?,
        Command::Unshare {
            name,
            path,
            keep_owner,
            dry_run,
        } => share::unshare(ctx, &name, &path, keep_owner, dry_run)?,
        Command::Set { name, settings } => crate::settings::set(ctx, &name, &settings)?,
        Command::Unset { name, keys } => crate::settings::unset(ctx, &name, &keys)?,
        Command::Completions { shell } => return Ok(crate::completions::print(shell)),
        Command::Cred(cred) => dispatch_cred(ctx, cred)?,
        Command::Net(args) => dispatch_net(ctx, &args)?,
        Command::Exec(args) => return Ok(runner::exec(ctx, &exec_request(&args))),
        Command::Shell(args) => return Ok(runner::exec(ctx, &shell_request(&args))),
        Command::Audit { name, json } => return audit::audit(ctx, &name, json),
        Command::Doctor { json } => return audit::doctor(ctx, json),
        Command::GitRemoteHelper { address, .. } => {
            return crate::git::remote::serve(ctx, &address);
        }
    }
    Ok(0)
}

/// `share`: --rw or read-only; --allow-git-writes / --no-allow-git-writes, or neither (keep
/// what an existing share has).
fn share_command(ctx: &Context, args: &ShareArgs) -> Result<()> {
    let access = if args.rw { Access::Rw } else { Access::Ro };
    let git_writes = match (args.allow_git_writes, args.no_allow_git_writes) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    share::share(ctx, &args.name, &args.path, access, git_writes)
}

/// The `cred` commands.
fn dispatch_cred(ctx: &Context, cred: CredCommand) -> Result<()> {
    match cred {
        CredCommand::Add {
            name,
            file,
            to,
            live,
        } => creds::add(ctx, &name, &file, to.as_deref(), live),
        CredCommand::Env { name, var, hosts } => creds::set_env(ctx, &name, &var, &hosts),
        CredCommand::Ssh {
            name,
            key,
            hosts,
            known_hosts,
        } => crate::broker::ssh::command::add(ctx, &name, &key, &hosts, &known_hosts),
        CredCommand::List { name, json } => creds::list(ctx, &name, json),
        CredCommand::Rm { name, item } => creds::remove(ctx, &name, &item),
        CredCommand::Sync { name, force } => creds::sync(ctx, &name, force),
    }
}

/// The `net` commands.
fn dispatch_net(ctx: &Context, args: &NetArgs) -> Result<()> {
    use crate::network::commands as net;
    match &args.action {
        NetAction::Allow { hosts, preset } => net::allow(ctx, &args.name, hosts, preset),
        NetAction::Deny { hosts, preset } => net::deny(ctx, &args.name, hosts, preset),
        NetAction::List { json } => net::list(ctx, &args.name, *json),
        NetAction::Log => net::log(ctx, &args.name),
    }
}

/// `exec NAME -- COMMAND`: the command in the agent's view.
fn exec_request(args: &ExecArgs) -> runner::Request<'_> {
    runner::Request {
        name: &args.name,
        cwd: args.cwd.as_ref(),
        env: &args.env,
        network: args.network.map(Into::into),
        clipboard_write: args.allow_clipboard_write,
        publish: &args.publish,
        command: Some(&args.command),
    }
}

/// `shell NAME`: the agent's login shell in its view, with nothing added to it.
fn shell_request(args: &ShellArgs) -> runner::Request<'_> {
    runner::Request {
        name: &args.name,
        cwd: args.cwd.as_ref(),
        env: &[],
        network: args.network.map(Into::into),
        clipboard_write: args.allow_clipboard_write,
        publish: &[],
        command: None,
    }
}

/// Help and version go to stdout with status 0; usage errors are one line with status 2.
fn clap_error(e: clap::Error) -> u8 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                2
            } else {
                0
            }
        }
        _ => {
            eprintln!(
                "agentuser: {}",
                usage_line(&e, &std::env::args_os().collect::<Vec<_>>())
            );
            2
        }
    }
}

/// clap's error in one line, with what it would say on the lines that follow when that is
/// what the user needs: which arguments are missing (and the usage), the similar option,
/// or for `exec` the command given without `--`.
fn usage_line(e: &clap::Error, argv: &[std::ffi::OsString]) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let text = e.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .trim_end_matches(':');
    let usage = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .unwrap_or("see 'agentuser --help'");
    let strings = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => vec![s.clone()],
        Some(ContextValue::Strings(v)) => v.clone(),
        _ => Vec::new(),
    };
    let invalid = strings(ContextKind::InvalidArg);
    let suggested = strings(ContextKind::SuggestedArg);
    match (e.kind(), invalid.first()) {
        (ErrorKind::MissingRequiredArgument, Some(_)) => {
            format!("missing {}: usage: {usage}", invalid.join(" "))
        }
        (ErrorKind::UnknownArgument, Some(bad)) if suggested.is_empty() => {
            match command_without_dashes(argv, bad) {
                Some(fixed) => format!(
                    "unexpected argument '{}': put the command after '--': {fixed}",
                    bad.escape_default()
                ),
                None => format!("{first} (see 'agentuser --help')"),
            }
        }
        (ErrorKind::UnknownArgument, Some(_)) => {
            format!("{first}: did you mean '{}'?", suggested.join("' or '"))
        }
        _ => format!("{first} (see 'agentuser --help')"),
    }
}

/// For `agentuser exec NAME CMD ARGS...` without `--`: the command line with `--` put before
/// CMD, when everything before the unexpected argument `bad` is a complete exec (options and
/// NAME) on its own.
fn command_without_dashes(argv: &[std::ffi::OsString], bad: &str) -> Option<String> {
    if argv.get(1).is_none_or(|a| a != "exec") || argv.iter().any(|a| a == "--") {
        return None;
    }
    let at = (2..argv.len()).find(|&i| {
        let arg = argv[i].to_string_lossy();
        arg == bad || arg.starts_with(&format!("{bad}="))
    })?;
    let mut probe: Vec<std::ffi::OsString> = argv[..at].to_vec();
    probe.extend(["--".into(), "true".into()]);
    Cli::try_parse_from(&probe).ok()?;
    let words: Vec<String> = argv[2..at]
        .iter()
        .chain(std::iter::once(&"--".into()))
        .chain(&argv[at..])
        .map(|a| shell_word(&a.to_string_lossy()))
        .collect();
    Some(format!("agentuser exec {}", words.join(" ")))
}

/// A word as a shell would need it typed: plain, or single-quoted with control characters
/// escaped (so a crafted argument cannot forge the output).
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%~".contains(c));
    if plain {
        return word.to_owned();
    }
    let inner: String = word
        .chars()
        .flat_map(|c| match c {
            '\'' => "'\\''".chars().collect::<Vec<_>>(),
            c if c.is_control() => c.escape_default().collect(),
            c => vec![c],
        })
        .collect();
    format!("'{inner}'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn line(args: &[&str]) -> String {
        let argv: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let e = Cli::try_parse_from(&argv).unwrap_err();
        usage_line(&e, &argv)
    }

    #[test]
    fn usage_errors_say_what_to_do() {
        let missing = line(&["agentuser", "exec", "coder"]);
        assert!(
            missing.starts_with("missing <COMMAND>...: usage: agentuser exec"),
            "{missing}"
        );
        let both = line(&["agentuser", "exec"]);
        assert!(both.contains("<NAME>"), "{both}");
        assert_eq!(
            line(&["agentuser", "exec", "coder", "ls", "-la"]),
            "unexpected argument 'ls': put the command after '--': agentuser exec coder -- ls -la"
        );
        assert_eq!(
            line(&["agentuser", "exec", "--cwd", "/x y", "coder", "-v", "it's"]),
            "unexpected argument '-v': put the command after '--': \
             agentuser exec --cwd '/x y' coder -- -v 'it'\\''s'"
        );
        let typo = line(&[
            "agentuser",
            "exec",
            "coder",
            "--netwrok",
            "none",
            "--",
            "ls",
        ]);
        assert!(typo.contains("did you mean '--network'"), "{typo}");
        let shell = line(&["agentuser", "shell", "coder", "ls"]);
        assert!(!shell.contains("'--'"), "{shell}");
    }
}
