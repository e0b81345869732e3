//! Start-up discipline of the setuid helper and command dispatch.
//!
//! Order matters (DESIGN.md section 2, THREAT-MODEL rows 5 and 18):
//! 1. make sure fds 0-2 are open; take the environment out of the process;
//! 2. parse the command line;
//! 3. record who the caller is, then become fully root and reset limits;
//! 4. load the fixed config and the registry; refuse agent callers;
//! 5. run the command.
#![forbid(unsafe_code)]

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Command, CredCommand};
use crate::config::Config;
use crate::context::{CallerEnv, Context};
use crate::error::{exit_code, report};
use crate::policy::{self, Caller};
use crate::registry::Registry;
use crate::share::Access;
use crate::sys::process;
use crate::{audit, creds, provision, report as show, runner, share};

pub fn main() -> u8 {
    process::ensure_std_fds();
    let caller_env = CallerEnv::new(process::take_environment());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    // exec and shell report their own failures with 125 (env(1) convention).
    let setup_failure = match cli.command {
        Command::Exec(_) | Command::Shell(_) => runner::EXIT_SETUP_FAILED,
        _ => 1,
    };
    let ctx = match setup(caller_env) {
        Ok(ctx) => ctx,
        Err(err) => {
            report(&err);
            return setup_failure;
        }
    };
    match dispatch(&ctx, cli.command) {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            exit_code(&err)
        }
    }
}

fn setup(caller_env: CallerEnv) -> Result<Context> {
    let caller = Caller::identify(&caller_env)?;
    process::become_root()?;
    process::reset_limits()?;
    let config = Config::load()?;
    let registry = Registry::open()?;
    let ctx = Context {
        caller,
        config,
        registry,
        caller_env,
    };
    policy::refuse_agent_callers(&ctx)?;
    Ok(ctx)
}

fn dispatch(ctx: &Context, command: Command) -> Result<u8> {
    match command {
        Command::Create {
            name,
            owner,
            comment,
        } => provision::create(ctx, &name, owner.as_deref(), comment.as_deref())?,
        Command::Delete { name, keep_home } => provision::delete(ctx, &name, keep_home)?,
        Command::List { json } => show::list(ctx, json)?,
        Command::Show { name, json } => show::show(ctx, &name, json)?,
        Command::Share(args) => {
            let access = if args.rw { Access::Rw } else { Access::Ro };
            share::share(ctx, &args.name, &args.path, access, args.allow_git_writes)?
        }
        Command::Unshare { name, path } => share::unshare(ctx, &name, &path)?,
        Command::Cred(cred) => match cred {
            CredCommand::Add {
                name,
                file,
                to,
                live,
            } => creds::add(ctx, &name, &file, to.as_deref(), live)?,
            CredCommand::Env { name, var } => creds::set_env(ctx, &name, &var)?,
            CredCommand::List { name, json } => creds::list(ctx, &name, json)?,
            CredCommand::Rm { name, item } => creds::remove(ctx, &name, &item)?,
            CredCommand::Sync { name, force } => creds::sync(ctx, &name, force)?,
        },
        Command::Net(args) => crate::network::commands::run(ctx, &args)?,
        Command::Exec(args) => return Ok(runner::exec(ctx, &args)),
        Command::Shell(args) => return Ok(runner::shell(ctx, &args)),
        Command::Audit { name, json } => return audit::audit(ctx, &name, json),
        Command::Doctor { json } => return audit::doctor(ctx, json),
    }
    Ok(0)
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
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("agentuser: {first} (see 'agentuser --help')");
            2
        }
    }
}
