#!/usr/bin/env bash
# `agentuser exec NAME -- /bin/true` side by side with runuser, sudo and the setpriv floor.
#
# Hermetic: run as root from a checkout. It builds the release binary, then works in a
# private mount namespace over a throwaway copy of /etc and private state, home and temp
# directories (the same scheme as the integration tests), creates its own agent there and
# leaves nothing behind on the host. Needs hyperfine, sudo and util-linux.
#
#   sudo bench/exec.sh [RESULTS_FILE]     # default bench/results/exec.md
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/exec.sh: run as root" >&2; exit 1; }
out=${1:-bench/results/exec.md}
cargo build --release --locked --quiet
bin=${CARGO_TARGET_DIR:-target}/release/agentuser

work=$(mktemp -d /var/cache/agentuser-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
cp -a /etc "$work/etc"
mkdir -p "$work/state" "$work/home" "$work/tmp" "$work/vartmp" "$work/shm" "$work/etc/agentuser"
chmod 1777 "$work/tmp" "$work/vartmp" "$work/shm"
cp pam/agentuser "$work/etc/pam.d/agentuser"
install -m 4755 "$bin" "$work/agentuser"
printf 'uid_min = 1850000000\nuid_max = 1850000999\n' > "$work/etc/agentuser/config.toml"

unshare --mount --propagation private -- /bin/bash -s "$work" "$out" <<'INNER'
set -euo pipefail
work=$1 out=$2
mount --bind "$work/etc" /etc
mount -t tmpfs -o mode=0755 agentuser-bench /var/lib
mkdir -p /var/lib/agentuser
mount --bind "$work/state" /var/lib/agentuser
mount --bind "$work/home" /home
mount --bind "$work/tmp" /tmp
mount --bind "$work/vartmp" /var/tmp
mount --bind "$work/shm" /dev/shm
"$work/agentuser" create bench >/dev/null
user=agent-bench
hyperfine -N --warmup 20 --runs "${RUNS:-300}" --export-markdown "$work/table.md" \
    "setpriv --reuid $user --regid $user --init-groups /bin/true" \
    "runuser -u $user -- /bin/true" \
    "$work/agentuser exec bench -- /bin/true" \
    "$work/agentuser exec bench --network none -- /bin/true" \
    "sudo -u $user /bin/true" </dev/null
{
    echo "# exec benchmark"
    echo
    echo "\`bench/exec.sh\`, $(date -u +%Y-%m-%d), $(uname -sr), $(nproc) CPUs, hyperfine $(hyperfine --version | cut -d' ' -f2)."
    echo "Every command starts /bin/true as the agent's account, as root, stdio not a terminal."
    echo "runuser and sudo open PAM sessions as agentuser does; setpriv is the floor (no PAM,"
    echo "no namespaces). Targets: agentuser exec <= 1.25x runuser and faster than sudo."
    echo
    sed "s|$work/agentuser|agentuser|g" "$work/table.md"
} > "$work/result.md"
INNER
cp "$work/result.md" "$out"
cat "$out"
