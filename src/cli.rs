//! Command-line definitions. `--help` and the man pages in `man/` are generated from here,
//! so help text is documentation: keep it exact.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Give every AI agent its own Unix account";

const LONG_ABOUT: &str = "\
Give every AI agent its own Unix account.

agentuser provisions a dedicated, locked Unix account for each agent, shares allowlisted \
files and directories with it through POSIX ACLs, manages its credentials, and runs it under \
its own uid with a clean environment, its own terminal, a PAM session and a private view of \
the file system. Nothing else of the owner's is reachable.

agentuser is installed setuid-root. Root may do anything; members of the group named by \
`creators_group` in /etc/agentuser/config.toml may create agents (up to \
`max_agents_per_owner` each) and manage the agents they own. Agent accounts may not use \
agentuser at all.";

const AFTER_LONG_HELP: &str = "\
Exit status: 0 on success, 1 when the operation failed, 2 on a usage error. `exec` and \
`shell` return the command's own status, 128+N when it died of signal N, 125 when agentuser \
failed before running it, 126 when it could not be executed and 127 when it was not found.

Files: /etc/agentuser/config.toml (policy, see agentuser.toml(5)), \
/var/lib/agentuser/agents/NAME.toml (agent records), /var/lib/agentuser/secrets/NAME/ \
(environment credentials), /etc/pam.d/agentuser (PAM service).";

#[derive(Debug, Parser)]
#[command(
    name = "agentuser",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an agent and its Unix account
    #[command(long_about = "\
Create an agent and its Unix account.

The account name comes from `user_template` (default agent-NAME). It gets a uid from the \
configured agent range that was never used before (uids of deleted agents are never handed \
out again), its own group with the same number, a locked password, no supplementary groups, \
and a 0700 home under `home_base`. The owner is the caller; root may name another owner.")]
    Create {
        /// Agent name: 1 to 24 characters from a-z, 0-9 and '-', starting with a letter
        name: String,
        /// Owner of the agent (root only; default: the caller, or SUDO_USER under sudo)
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// Comment for the account's GECOS field
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Delete an agent: processes, account, group, home, shares, credentials
    #[command(long_about = "\
Delete an agent.

Kills every process of the agent, revokes its shares and credentials, removes its account, \
group, home (unless --keep-home), crontab, the files it owns in /tmp, /var/tmp and /dev/shm, \
and everything of it in /var/lib/agentuser: record, lock file, stored secrets, git \
directories, share index (its share tracker ends), network log, run markers and run files. A run whose runner was \
killed is handled first, as the next exec would: its read-write shares are searched for \
repositories the agent planted. Its uid is kept as a tombstone and never reused. An \
interrupted delete is completed by running it again.

Files the agent created inside its shares are handed back: every entry of a shared tree that \
the agent owns is given to the tree's owner (and the owner's group when it had the agent's), \
with the same walk and rules as `unshare` (see there); --keep-owner leaves them owned by the \
agent's uid, which no account will have. --dry-run prints what would be removed and changes \
nothing.

Root can delete an agent whose record is damaged: the account and uid come from the passwd \
entry of the name template, shares and credentials from what of the record still parses; \
what cannot be found is said on stderr. Root's delete of a name that only has files left in \
/var/lib/agentuser (doctor reports them) removes them, after searching the shares its run \
markers name.")]
    Delete {
        /// Agent name
        name: String,
        /// Keep the agent's home directory (its uid is never reused, so it stays inert)
        #[arg(long)]
        keep_home: bool,
        /// Leave the files the agent owns inside its shares owned by its (dead) uid
        #[arg(long)]
        keep_owner: bool,
        /// Say what would be removed, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// List agents (non-root callers see only their own)
    List {
        /// Print a JSON array instead of a table
        #[arg(long, conflicts_with = "names")]
        json: bool,
        /// Print only the names, one per line (for shell completion)
        #[arg(long, hide = true)]
        names: bool,
    },
    /// Show one agent
    Show {
        /// Agent name
        name: String,
        /// Print a JSON object instead of text
        #[arg(long)]
        json: bool,
    },
    /// Share a file or directory tree with an agent through POSIX ACLs
    #[command(long_about = SHARE_LONG_ABOUT)]
    Share(ShareArgs),
    /// Revoke a share: remove the agent's ACL entries from the whole tree
    #[command(long_about = "\
Revoke a share: remove the agent's ACL entries from the whole tree.

Removes the agent's access and default entries from every entry of the tree, files added \
since the share included, and drops the share from the agent's record. An entry left with \
no named ACL entry gets its plain mode back. A path that no longer exists is simply dropped \
from the record. An interrupted unshare is completed by running it again; `delete` does the \
same for every share of the agent.

Files handed back: every directory and regular file of the tree that the agent owns (what it \
created there) is given to the tree's owner, and to the owner's primary group when its group \
was the agent's; setuid and setgid bits are cleared on such files. The walk is the one of \
`share`: on descriptors, never through a symlink (symlinks and special files the agent made \
stay its own, the owner can delete them), never into another file system, and never a file \
with more than one hard link (another link may lie where the owner must not get a file the \
agent chose: listed on stderr and left as it is). --keep-owner leaves every file owned by the \
agent. --dry-run says what would be done and changes nothing.")]
    Unshare {
        /// Agent name
        name: String,
        /// Shared path, as given to `share`
        path: PathBuf,
        /// Leave the files the agent owns in the tree owned by the agent
        #[arg(long)]
        keep_owner: bool,
        /// Say what would be done, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Change the agent's settings: environment variables, network mode, working directory
    #[command(long_about = SET_LONG_ABOUT)]
    Set {
        /// Agent name
        name: String,
        /// Settings: env.VAR=VALUE, network=allowlist|none|host, cwd=DIR
        #[arg(value_name = "KEY=VALUE", required = true)]
        settings: Vec<String>,
    },
    /// Remove settings of the agent (back to the defaults)
    #[command(long_about = "\
Remove settings of the agent: env.VAR (the variable is no longer set), network (exec uses \
the config's `network` again) or cwd (exec starts in the current directory when it lies in a \
share, else the home). Removing a setting that is not set is an error and changes nothing.")]
    Unset {
        /// Agent name
        name: String,
        /// Settings to remove: env.VAR, network, cwd
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// Manage the agent's credentials (copied files, live files, environment values)
    #[command(subcommand)]
    Cred(CredCommand),
    /// Manage the agent's network allowlist and read its log of refused connections
    #[command(long_about = NET_LONG_ABOUT, after_long_help = NET_AFTER_LONG_HELP)]
    Net(NetArgs),
    /// Run a command as the agent in its isolated view
    #[command(long_about = EXEC_LONG_ABOUT)]
    Exec(ExecArgs),
    /// Start the agent's login shell, under the same rules as exec
    #[command(long_about = SHELL_LONG_ABOUT)]
    Shell(ShellArgs),
    /// Report what the agent can actually reach
    #[command(long_about = AUDIT_LONG_ABOUT)]
    Audit {
        /// Agent name
        name: String,
        /// Print a JSON report instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Check the installation and the host for settings that weaken isolation
    #[command(long_about = DOCTOR_LONG_ABOUT)]
    Doctor {
        /// Print a JSON report instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh or fish)
    #[command(long_about = "\
Print a completion script for SHELL on standard output. Subcommands and options complete, and \
agent names complete to your own agents (the script runs `agentuser list --names`). \
install.sh installs the bash one in /usr/share/bash-completion/completions/agentuser. For zsh \
write it as _agentuser into a directory of your $fpath; for fish into \
~/.config/fish/completions/agentuser.fish.")]
    Completions {
        /// The shell to write the script for
        shell: CompletionShell,
    },
    /// Serve an agent's commits to git (run by git as git-remote-agentuser)
    #[command(long_about = GIT_REMOTE_HELPER_LONG_ABOUT)]
    GitRemoteHelper {
        /// The remote's name (given by git, unused)
        remote: String,
        /// NAME:PATH: the agent and the work tree of your repository in its read-write share
        address: String,
    },
}

const GIT_REMOTE_HELPER_LONG_ABOUT: &str = "\
Serve an agent's commits to git: the remote helper behind URLs agentuser::NAME:PATH.

git runs it (through the git-remote-agentuser script that install.sh puts beside agentuser) \
when you fetch from such a remote, for example after

  git remote add --no-tags agent-coder agentuser::coder:$HOME/proj

in ~/proj. Then `git fetch agent-coder` brings the agent's branches into \
refs/remotes/agent-coder/*, to review and merge like any other remote's. It runs `git \
upload-pack` on the agent's git directory for PATH as the agent, inside its view (a full run \
like exec, without a network), so your git only receives a pack: nothing of the agent's runs \
as you, and your git never operates in a directory the agent can write. Only fetching is \
offered (`connect git-upload-pack`); pushing is refused. Only the agent's owner and root may \
use it.";

const AUDIT_LONG_ABOUT: &str = "\
Report what the agent can actually reach.

A probe runs as the agent twice: in the view `exec` builds (with the configured network), and \
with the plain uid switch (the host's view, which the agent's uid gets whenever it runs outside \
agentuser: cron, at, su, an ssh login). Each finding names the concrete path, socket, port, \
group or rule, its severity (high, medium, info) and where it was reached (view, host-only, \
both). It covers readable files in other users' homes and /root (secret-looking ones named: \
SSH keys, .netrc, cloud and registry credentials, browser profiles, shell files exporting \
tokens), writable paths outside the agent's home, shares and private temp directories, unix \
sockets (path and abstract) and loopback TCP ports of other users that accept a connection \
(nothing is sent), UDP listeners, risky groups, sudo rules, cron/at/linger, and the agent's \
shares and credentials with their state, with how git is protected in each read-write share \
(the agent's own repositories and their agentuser:: fetch URLs; a share with \
--allow-git-writes is a high finding). File contents are never printed; at most the first \
4 KiB of a few candidate files are read to classify them.

Exit status: 0 when no finding is high, 1 otherwise (host-only findings count), 2 on a usage \
error.";

const DOCTOR_LONG_ABOUT: &str = "\
Check the installation and the host for settings that weaken isolation.

Installation: the binary is setuid-root and only root can replace it, /etc/pam.d/agentuser is \
present, the config is valid and root-owned, the state directories and agent homes have the \
right owners and modes. Host: dev.tty.legacy_tiocsti, fs.protected_symlinks, \
fs.protected_hardlinks, fs.protected_regular, fs.protected_fifos, /proc hidepid, the Landlock \
ABI, namespaces, a working POSIX ACL round trip, human homes others can enter, and whether \
agent accounts may use cron or at. State: damaged records, temp files of interrupted writes, \
and, for root, files in /var/lib/agentuser of agents that no longer exist (a run marker among \
them is a run whose shares were never searched for planted repositories). Every finding says \
how to fix it.

Any user but an agent may run doctor: it reports only what a local user can learn anyway, \
never a file's content. Exit status: 0 when no finding is high, 1 otherwise.";

#[derive(Debug, Args)]
pub struct ShareArgs {
    /// Agent name
    pub name: String,
    /// File or directory to share (a tree you own)
    pub path: PathBuf,
    /// Read-only access: r-X on every entry (the default)
    #[arg(long, conflicts_with = "rw")]
    pub ro: bool,
    /// Read-write access: rwX on every entry, new files editable by both sides
    #[arg(long)]
    pub rw: bool,
    /// Give the agent your real .git in this read-write share (expert escape, risky: see below)
    #[arg(long, conflicts_with = "no_allow_git_writes")]
    pub allow_git_writes: bool,
    /// Take --allow-git-writes away from a share that has it
    #[arg(long)]
    pub no_allow_git_writes: bool,
}

const SHARE_LONG_ABOUT: &str = "\
Share a file or directory tree with an agent through POSIX ACLs.

--ro (the default) gives the agent r-X on every entry of the tree, --rw gives rwX; \
directories also get a default ACL so that new files inherit the grant. In a read-write \
share the owner keeps full access to what the agent creates and the agent to what the owner \
creates: a file made by either side with the usual mode is editable and deletable by the \
other.

No ACL is placed on the path's ancestors or on your home: `exec` and `shell` bind-mount each \
share at its own path in the agent's view (read-only for --ro), so a share inside a 0700 home \
works and nothing else in the home becomes reachable.

The walk never follows symlinks (a symlink gets no ACL) and works on file descriptors, so a \
rename or symlink swapped in meanwhile cannot redirect it. It does not enter other file \
systems. Entries owned by anyone other than the tree's owner and the agent, and files with \
more than one hard link (unless the agent owns them), get no ACL: they are skipped and listed on stderr, as are entries \
that cannot be changed; the share still succeeds. A progress line shows on a terminal for long \
walks. A hang-up or Ctrl-C stops the walk at a safe point (exit 128 + the signal number); an \
interrupted share is completed by running it again.

Inside a read-write share every .git directory (and .git file) is read-only for the agent: \
its ACL entries there are r-X, and in its view each one is covered by a git directory of the \
agent's own (kept in /var/lib/agentuser/git/NAME/, borrowing your objects read-only), so the \
agent commits, branches and stashes there while your .git stays untouched. An agent that \
could write .git/config or .git/hooks would run code as you on your next `git status`. You get \
its commits with `git remote add --no-tags agent-NAME agentuser::NAME:PATH` and `git fetch \
agent-NAME` (see git-remote-helper). --allow-git-writes gives the agent your real .git for \
one share instead, an expert escape flagged by share, show and audit: use it only for \
repositories whose git commands you will never run yourself, or that you inspect before use. \
The agent's git trusts its shared repositories (safe.directory is set in its environment, \
nothing is written to its home). \
While the agent runs, a repository it plants in a read-write share (a .git, gitfile or git \
directory layout made from your files, or moved in) is renamed out of git's way \
(NAME.agentuser-quarantine-...) and reported when the run ends; shares with \
--allow-git-writes are not watched.

Sharing a path that is already shared with the agent changes its access in place (--ro/--rw \
as given now). It keeps --allow-git-writes, saying so on stderr, unless --no-allow-git-writes \
is given (or the share becomes --ro, which never has it). Sharing a path inside or above another share of the same \
agent is refused: change or unshare that share instead.

Refused, changing nothing: a path that does not exist or is neither a directory nor a regular \
file; one you do not own (root may share anything not refused below); / and system trees \
(/bin, /boot, /dev, /etc, /lib*, /proc, /root, /run, /sbin, /snap, /sys, /usr, /var except \
below /var/tmp); /home, /media, /mnt, /opt, /srv, /tmp and /var/tmp themselves; a whole home \
directory or a tree containing one; agent homes and anything in them; a path that is not \
valid UTF-8; a file system without POSIX ACL support. Paths are resolved with your own access \
rights.";

#[derive(Debug, Subcommand)]
pub enum CredCommand {
    /// Give the agent a credential file (a tracked copy, or --live)
    #[command(long_about = "\
Give the agent a credential file.

By default the file is copied: it is read with your own access rights (so nothing you could \
not read yourself can be obtained), at most `cred_max_bytes` bytes, and written into the \
agent's home as the agent, mode 0600, through a temp file and a rename. No symbolic link is \
followed in any component of the destination, and a link, FIFO or hard link planted there is \
refused, not written through. The SHA-256 of the source and of the copy are recorded, so \
`cred list` shows whether either changed and `cred sync` (and every exec) copies a changed \
source again.

A source that anyone but you and root could change is refused, at add and at every sync (as \
sshd's StrictModes): the file, every directory on its path and every directory holding a \
symlink on the way must be yours or root's, not writable by group or others, and without an \
ACL entry letting another uid write (as a read-write share gives an agent).

With --live the original stays where it is: it gets a read ACL entry for the agent (on the \
file only, never on its directories) and is bind-mounted read-only at the destination in the \
agent's view, so a token your tools refresh in place is seen at once. The file must be yours. \
It is pinned to the file added: a file renamed over it is another file and gets nothing until \
you add it again (state source-replaced).")]
    Add {
        /// Agent name
        name: String,
        /// Credential file, read with your own access rights
        file: PathBuf,
        /// Destination relative to the agent's home (default: FILE's path relative to your home)
        #[arg(long, value_name = "PATH")]
        to: Option<PathBuf>,
        /// Bind-mount the original (a file you own) read-only into the agent's view instead of
        /// copying it
        #[arg(long)]
        live: bool,
    },
    /// Store an environment credential; the value is read from standard input
    #[command(long_about = "\
Store an environment credential; the value is read from standard input.

From a terminal the value is read as one line without echo; otherwise the whole input is \
taken, with one trailing newline dropped. The value is stored readable by root only under \
/var/lib/agentuser/secrets/NAME/ and set in the agent's environment by exec. It never \
appears in a command line, in `show`, `list` or `cred list`, in logs or in error messages. \
Storing a variable again replaces its value.

With --host the credential is brokered: the agent never holds the value. Its environment \
gets a placeholder of the same shape (same prefix, length and alphabet, unique to the \
agent); in the allowlist network mode the policy point terminates TLS to the given hosts \
only (with a certificate authority made for the run and trusted in the agent's view) and \
puts the value in place of the placeholder in request headers (Basic credentials included, \
as git sends a token) and URLs sent to them. A \
request carrying the placeholder anywhere else (another host, plain HTTP, a plain TCP \
stream) is refused and logged as a likely exfiltration attempt. The value needs at least \
16 letters or digits after its prefix.")]
    Env {
        /// Agent name
        name: String,
        /// Environment variable name: letters, digits and '_', not starting with a digit
        var: String,
        /// Bind the value to HOST: the agent gets a placeholder, the value is only sent to
        /// these hosts over TLS (repeatable)
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// Let the agent use one of your ssh keys toward chosen hosts, never holding it
    #[command(long_about = "\
Let the agent use one of your ssh keys toward chosen hosts, without ever holding the key.

In the allowlist network mode, SSH_AUTH_SOCK in the agent's view is a socket served by the \
policy point (as agentuser-net, never as the agent). It lists only the keys given with \
`cred ssh` and signs only ssh logins to the given hosts: the client must bind the connection \
to the server's host key (OpenSSH 8.9 or later does, with session-bind@openssh.com), the host \
key must be one recorded for a --host of that key, and the data to sign must be the login \
request of that very session. Anything else (other keys, other hosts, agent forwarding, \
signing commits or arbitrary data, adding or removing keys) is refused and logged in \
`agentuser net NAME log`.

The host keys are taken now from your ~/.ssh/known_hosts (exact host names, plain or \
hashed; port 22) and from --known-hosts files; a host without one is refused. The \
signatures come, at each run, from your own ssh-agent when you start the run yourself and \
it holds the key (SSH_AUTH_SOCK of your environment, reached with your rights), otherwise \
from the private key file beside KEY.pub, read with your rights at run start: unencrypted \
Ed25519 and ECDSA keys only (load other keys into your ssh-agent). The allowlist must \
still let the connection out (`agentuser net NAME allow HOST:22`).")]
    Ssh {
        /// Agent name
        name: String,
        /// Your public key file (KEY.pub; the private key is KEY beside it)
        key: PathBuf,
        /// A host the key may be used for (repeatable, at least one)
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// More host keys, in known_hosts format (repeatable)
        #[arg(long = "known-hosts", value_name = "FILE")]
        known_hosts: Vec<PathBuf>,
    },
    /// List the agent's credentials and their state
    #[command(long_about = "\
List the agent's credentials: kind (copy, live, env, ssh), source, destination, recorded SHA-256 \
and state: ok, source-changed (sync copies it again), agent-modified (the agent changed or \
replaced its copy; sync keeps it unless --force), missing-source, unreadable-source (you can \
no longer read it, or others could change it), source-replaced (a live file renamed over: \
add it again), missing-copy (sync restores it). Environment values are never shown.")]
    List {
        /// Agent name
        name: String,
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove a credential (a file credential by its source, an environment one by name)
    #[command(long_about = "\
Remove a credential: the agent's copy, or the read ACL entry and the mount of a live file, or \
the stored environment value; then its record. A file credential is named by its source (every \
copy of it goes) or its destination, an environment credential by its variable name.")]
    Rm {
        /// Agent name
        name: String,
        /// The credential's source FILE, its destination, or its VAR name
        item: OsString,
    },
    /// Re-copy credentials whose source changed
    #[command(long_about = "\
Re-copy credentials whose source changed, and restore missing copies and the placeholders and \
read access of live credentials. Sources are read with the owner's access rights. A copy the \
agent modified is reported and kept unless --force; nothing is ever copied from the agent \
back. exec does the same before every run, quietly when nothing changed. Prints one line per \
credential it changed or could not sync; exits 1 when any could not be synced.")]
    Sync {
        /// Agent name
        name: String,
        /// Overwrite copies the agent modified (a planted link is still never followed)
        #[arg(long)]
        force: bool,
    },
}

/// Shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

const SET_LONG_ABOUT: &str = "\
Change the agent's settings, kept in its record and shown by `show` (and `show --json`, as \
`env`, `network` and `cwd`). Each argument is one KEY=VALUE:

env.VAR=VALUE sets VAR in the agent's environment at every exec and shell (after the \
variables agentuser sets itself, before environment credentials and --env). VAR is letters, \
digits and '_'; the variables agentuser owns (HOME, USER, LOGNAME, SHELL, PATH, the proxy \
variables, GIT_CONFIG_*) are refused. Values are not secret: they are shown by `show` and \
visible in the process list while `set` runs. A variable whose name looks like a secret \
(containing TOKEN, SECRET, PASSWORD, PASSWD or CREDENTIAL, or with a word AUTH, KEY, APIKEY, \
PASS or PAT between underscores) is refused: store secrets with `agentuser cred env NAME VAR`, which keeps them readable by root \
only.

network=allowlist|none|host is the network mode exec uses without --network (see exec).

cwd=DIR is the directory exec and shell start in without --cwd, before the current \
directory; DIR is made absolute like --cwd and must exist in the agent's view at exec time.

All arguments are checked before anything changes; setting a key again replaces its value.";

/// Network view of the agent (the command line's form of [`crate::record::Network`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// A private network namespace whose only way out is agentuser's policy point, to the
    /// destinations in the agent's allowlist (`agentuser net`)
    Allowlist,
    /// The host's network, loopback services included
    Host,
    /// A private network namespace with loopback only
    None,
}

impl From<NetworkArg> for crate::record::Network {
    fn from(arg: NetworkArg) -> Self {
        match arg {
            NetworkArg::Allowlist => crate::record::Network::Allowlist,
            NetworkArg::Host => crate::record::Network::Host,
            NetworkArg::None => crate::record::Network::None,
        }
    }
}

#[derive(Debug, Args)]
pub struct NetArgs {
    /// Agent name
    pub name: String,
    #[command(subcommand)]
    pub action: NetAction,
}

#[derive(Debug, Subcommand)]
pub enum NetAction {
    /// Add destinations to the allowlist
    #[command(long_about = "\
Add destinations to the allowlist. HOST is a name (api.anthropic.com), a wildcard for every \
name below a domain (*.githubusercontent.com, any depth, not the domain itself), an address \
(10.1.2.3, [fd00::1]) or localhost; each optionally with :PORT. Without a port an entry \
allows ports 80 and 443; localhost always needs a port. Entries already present are kept once.")]
    Allow {
        /// HOST[:PORT] entries
        #[arg(value_name = "HOST[:PORT]", required_unless_present = "preset")]
        hosts: Vec<String>,
        /// Add the entries of a preset (repeatable; see below)
        #[arg(long, value_name = "NAME")]
        preset: Vec<String>,
    },
    /// Remove destinations from the allowlist
    #[command(long_about = "\
Remove entries from the allowlist, spelled as `list` shows them (or a --preset's entries). \
An entry that is not in the list is an error and nothing is removed.")]
    Deny {
        /// HOST[:PORT] entries, as `list` shows them
        #[arg(value_name = "HOST[:PORT]", required_unless_present = "preset")]
        hosts: Vec<String>,
        /// Remove the entries of a preset (repeatable)
        #[arg(long, value_name = "NAME")]
        preset: Vec<String>,
    },
    /// Show the allowlist and the agent's network mode
    List {
        /// Print a JSON object instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print the log of refused connections and DNS queries
    Log,
}

const NET_LONG_ABOUT: &str = "\
Manage the agent's network allowlist and read its log of refused connections.

In the allowlist network mode (the default; see exec --network) the agent runs in a network \
namespace of its own whose only way out is agentuser's policy point: a process beside the \
agent, running as the unprivileged system account agentuser-net, that connects on the \
agent's behalf to the destinations in this list and to nothing else. Clients that honour \
HTTP_PROXY, HTTPS_PROXY and ALL_PROXY (set in the agent's environment) use it as an HTTP \
proxy (CONNECT and plain HTTP); every other TCP connection is captured transparently, and a \
DNS stub inside the view answers only names in the list, with addresses the policy point \
maps back to the name. Names are resolved only by the policy point, with the host's resolver \
configuration: a name outside the list is never resolved, so no query for it leaves the \
host. UDP other than DNS to the stub, ICMP and raw sockets do not leave the namespace; \
such packets are dropped and logged as refusals too.

A name that resolves to a loopback, link-local, private, shared or unique-local address is \
refused (DNS rebinding, cloud metadata at 169.254.169.254) unless the entry is that address \
itself. localhost:PORT makes the host's loopback service on PORT reachable at \
127.0.0.1:PORT (and ::1) inside the view. For TLS the server name (SNI) of the client's \
first message must be the name the connection was made for; TLS is never decrypted.

Every refused connection and DNS query is logged to syslog (authpriv) and to the agent's \
log, which only root and the owner can read (`net NAME log`); when a run ends, exec prints \
one line per blocked destination with the command that would allow it.

The list is kept in the agent's record and shown by `show`; changes apply from the next run.";

const NET_AFTER_LONG_HELP: &str = "\
Presets (--preset NAME) and their exact entries:
  anthropic  api.anthropic.com console.anthropic.com statsig.anthropic.com
  openai     api.openai.com auth.openai.com chatgpt.com
  opencode   opencode.ai *.opencode.ai models.dev
  github     github.com github.com:22 *.github.com *.githubusercontent.com
  npm        registry.npmjs.org registry.yarnpkg.com
  pypi       pypi.org files.pythonhosted.org
  crates     crates.io index.crates.io static.crates.io
  debian     deb.debian.org security.debian.org";

const EXEC_LONG_ABOUT: &str = "\
Run a command as the agent in its isolated view.

Only root and the agent's owner may run it. The run is logged to syslog (caller, agent, \
command name, and at its end the exit status and duration; never arguments or environment \
values); a refused run is logged with the reason.

Terminal: when any standard stream is a terminal, the command gets a pseudo-terminal of its \
own, owned by the agent, and agentuser relays it (your terminal is in raw mode meanwhile and \
restored afterwards; window-size changes follow; Ctrl-C and Ctrl-Z go to the agent's \
foreground job). When the command stops (Ctrl-Z), agentuser stops every process of the agent \
(its background ones too), restores your terminal and stops with it, so your shell shows the \
job stopped; fg continues them, in raw mode, with a SIGWINCH to redraw. A run in the \
background that reads your terminal stops the same way. The agent never holds a descriptor of your terminal, so it cannot push \
input into your shell (TIOCSTI). Its output passes a filter that drops the control sequences \
a terminal answers with text the agent chose (title and icon reports CSI 20/21 t, DECRQSS, \
OSC 50 font queries, unchecked XTGETTCAP), or that act outside the screen (OSC 52 clipboard, \
key rebinding, file transfer, APC/PM/SOS), in 7-bit and 8-bit form; cursor, device and colour \
queries, modes, hyperlinks and titles pass (README: What the terminal relay drops). \
--allow-clipboard-write lets OSC 52 clipboard writes through, never reads. Otherwise the command starts in a new session without a \
controlling terminal and the standard streams are passed through untouched.

View: the command runs in its own mount, pid and IPC namespaces. /home, /root, /run/user, \
the agents' home base and other agents' homes are empty; the agent's home is at its own \
path; each share (and live credential) is mounted at its own path, read-only for ro shares; \
/tmp, /var/tmp and /dev/shm are private and empty at every run; /proc shows only the \
agent's processes. Network (--network, else the agent's own setting, else the config's \
`network`, by default allowlist): allowlist gives it a network namespace whose only way out \
is agentuser's policy point, to the destinations of `agentuser net NAME allow` (see \
agentuser-net(1)), with HTTP_PROXY, HTTPS_PROXY and ALL_PROXY set; none gives it loopback \
only; host leaves the host's network reachable, loopback services of other users and the \
cloud metadata endpoint included (audit rates it high). --publish PORT makes a port the \
agent listens on in its view reachable at 127.0.0.1:PORT on the host for the run (allowlist \
and none). Abstract unix sockets of the host (X11, D-Bus shims) stay out of reach either way \
where the kernel has Landlock ABI 6 (Linux 6.12+). When the command exits, every process it \
left behind is killed.

Identity: the agent's uid and gid, and the account's groups from the group database (none \
unless an admin added some; never the caller's), with no-new-privs set (setuid programs such \
as sudo gain nothing), after a PAM session (service agentuser: account and session stacks, \
no password) is opened; every descriptor above 2 is closed.

Environment: built from scratch: HOME, USER, LOGNAME, SHELL, PATH (the agent's own \
~/.local/bin, ~/bin and ~/.cargo/bin, then the config's `path`), NPM_CONFIG_PREFIX=~/.local \
(so `npm install -g`, like `pip install --user` and `cargo install`, installs into the \
agent's home and onto its PATH), TERM, LANG, LC_* and TZ when their values are sane (no \
paths), the terminal capabilities COLORTERM, TERM_PROGRAM, TERM_PROGRAM_VERSION and NO_COLOR \
when short and plain, the variables named in the config's `env_allowlist`, the agent's \
env.VAR settings (`agentuser set`), its environment credentials, and --env values (last \
wins).

Directory: --cwd, else the agent's cwd setting (`agentuser set NAME cwd=DIR`), else the \
current directory when it lies inside a share, else the home. A --cwd or cwd setting that \
does not exist in the agent's view is an error.

A command that is not found in the agent's view but exists for you in your home (a path \
such as ~/.opencode/bin/opencode, or a name found on your PATH there) is reported as such, \
with how to make it available: your home is not in the agent's view.

Exit status: the command's own, 128+N when it died of signal N, 125 when agentuser failed \
before running it, 126 when it could not be executed, 127 when it was not found. SIGTERM, \
SIGHUP, SIGINT, SIGQUIT, SIGUSR1 and SIGUSR2 sent to agentuser are passed on to the \
command.";

const SHELL_LONG_ABOUT: &str = "\
Start the agent's login shell (from its passwd entry, else the config's `shell`), as a login \
shell (argv[0] starting with '-'), under exactly the rules of exec: same view, terminal \
relay with job control, environment, PAM session and exit status.";

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Agent name
    pub name: String,
    /// Directory to start in (default: the current directory when inside a share, else home)
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Set an environment variable for the command (repeatable; VAR is letters, digits, '_')
    #[arg(long = "env", value_name = "VAR=VALUE")]
    pub env: Vec<String>,
    /// Network view: allowlist (only the agent's allowed destinations, through the policy
    /// point), none (loopback only) or host (default: the agent's setting, else the config)
    #[arg(long, value_enum)]
    pub network: Option<NetworkArg>,
    /// Let the agent's OSC 52 clipboard writes reach your terminal (reads stay blocked)
    #[arg(long)]
    pub allow_clipboard_write: bool,
    /// Make PORT, where the agent listens in its view, reachable at 127.0.0.1:PORT on the
    /// host for the run (repeatable; allowlist and none modes)
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub publish: Vec<u16>,
    /// Command and arguments, after `--`; looked up on the agent's PATH
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Agent name
    pub name: String,
    /// Directory to start in (default: the current directory when inside a share, else home)
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Network view: allowlist, none or host (default: the agent's setting, else the config)
    #[arg(long, value_enum)]
    pub network: Option<NetworkArg>,
    /// Let the agent's OSC 52 clipboard writes reach your terminal (reads stay blocked)
    #[arg(long)]
    pub allow_clipboard_write: bool,
}

/// The clap command, for man-page generation and tests.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
