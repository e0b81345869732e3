#!/bin/sh
# Builds and installs agentuser on Debian or Ubuntu. Run as root: sudo ./install.sh
#   --no-deps   do not install system packages with apt-get
set -eu
cd "$(dirname "$0")"

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo ./install.sh)" >&2; exit 1; }

if [ "${1:-}" != "--no-deps" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # acl: getfacl/setfacl for checks; libacl1-dev, libpam0g-dev, gcc: to build and link.
    apt-get install -y -qq acl libacl1-dev libpam0g-dev gcc >/dev/null
fi

# Build as the invoking user when run through sudo, so target/ stays theirs.
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    runuser -u "$SUDO_USER" -- env PATH="$user_home/.cargo/bin:$PATH" HOME="$user_home" \
        cargo build --release --locked
else
    cargo build --release --locked
fi

install -D -o root -g root -m 4755 target/release/agentuser /usr/local/bin/agentuser
# git's remote helper for agentuser::NAME:PATH URLs (git looks for git-remote-agentuser).
printf '#!/bin/sh\n# git remote helper for agentuser::NAME:PATH URLs: see agentuser-git-remote-helper(1).\nexec /usr/local/bin/agentuser git-remote-helper "$@"\n' \
    > /usr/local/bin/git-remote-agentuser.tmp
chmod 755 /usr/local/bin/git-remote-agentuser.tmp
mv /usr/local/bin/git-remote-agentuser.tmp /usr/local/bin/git-remote-agentuser
install -D -o root -g root -m 0644 pam/agentuser /etc/pam.d/agentuser
# Bash completion, where bash-completion loads it on demand (agent names: your own agents).
install -d -m 0755 /usr/share/bash-completion/completions
/usr/local/bin/agentuser completions bash > /usr/share/bash-completion/completions/agentuser.tmp
chmod 644 /usr/share/bash-completion/completions/agentuser.tmp
mv /usr/share/bash-completion/completions/agentuser.tmp /usr/share/bash-completion/completions/agentuser
install -d -m 0755 /usr/local/share/man/man1 /usr/local/share/man/man5
install -o root -g root -m 0644 man/*.1 /usr/local/share/man/man1/
install -o root -g root -m 0644 man/*.5 /usr/local/share/man/man5/
install -d -o root -g root -m 0755 /etc/agentuser
[ -e /etc/agentuser/config.toml ] ||
    install -o root -g root -m 0644 etc/config.toml /etc/agentuser/config.toml
getent group agentuser >/dev/null || groupadd --system agentuser
# The network policy point runs as this account (never root while it handles traffic).
getent passwd agentuser-net >/dev/null ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        agentuser-net
# The share tracker runs as this account between an agent's runs (src/share/track.rs).
getent passwd agentuser-track >/dev/null ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        agentuser-track
# A locked password does not stop key logins under UsePAM, and an agent can write its own
# ~/.ssh/authorized_keys: keep agent accounts (default template agent-{name}) out of sshd,
# which would give them the host's view instead of agentuser's.
if [ -d /etc/ssh/sshd_config.d ] && [ ! -e /etc/ssh/sshd_config.d/agentuser.conf ]; then
    printf '# Installed by agentuser: agent accounts never log in over ssh.\nDenyUsers agent-*\n' \
        > /etc/ssh/sshd_config.d/agentuser.conf
    chmod 644 /etc/ssh/sshd_config.d/agentuser.conf
fi
install -d -o root -g root -m 0711 /var/lib/agentuser
echo "agentuser installed; add users to group 'agentuser' to let them create agents."
