#!/usr/bin/env bash
# `agentuser exec NAME -- /bin/true` side by side with runuser and sudo (both also open a PAM
# session) and the floor, setpriv (a bare uid switch), all starting /bin/true as the agent's
# account. Hermetic: the agent is created in the benchmark sandbox (bench/lib.sh) and goes
# with it. Run as root from anywhere: bench/exec.sh   Writes bench/results/exec.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_setup
out=bench/results/exec.md
json=$BENCH_DIR/exec.json
# Rounds of 30 runs of each command, in an order of their own, pooled (bench/lib.sh
# rounds_script, pool): the machine's speed drifts over minutes, and 300 runs of one command
# in a row would take the drift alone.
rounds=${ROUNDS:-10}
per_round=${PER_ROUND:-30}
runs=$((rounds * per_round))
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rounds_script "$BENCH_DIR/exec" "$rounds" "$per_round" 5 \
    setpriv 'setpriv --reuid agent-bench --regid agent-bench --init-groups /bin/true' \
    runuser 'runuser -u agent-bench -- /bin/true' \
    agentuser "$BIN exec bench --network host -- /bin/true" \
    'agentuser --network none' "$BIN exec bench --network none -- /bin/true" \
    'agentuser --network allowlist' "$BIN exec bench --network allowlist -- /bin/true" \
    sudo 'sudo -u agent-bench /bin/true' >"$BENCH_DIR/rounds.sh"
in_sandbox "
getent passwd agentuser-net >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin agentuser-net
getent passwd agentuser-track >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin agentuser-track
$BIN create bench >/dev/null
bash $BENCH_DIR/rounds.sh
"
pool "$json" "$BENCH_DIR"/exec.*.json
{
    echo "# exec vs runuser, sudo and setpriv"
    echo
    echo "$(date -u +%F), $(nproc) cores, $(uname -r), load average $load_before before and"
    echo "$(cut -d' ' -f1-3 /proc/loadavg) after; $runs runs of each with hyperfine ($rounds rounds of $per_round, each round in its own order, pooled),"
    echo "stdio not a terminal, as root. agentuser opens a PAM session (service agentuser), builds"
    echo "the mount/pid/IPC namespaces and the view, drops privileges and waits for the namespace"
    echo "to be torn down; runuser and sudo open PAM sessions; setpriv is the bare uid switch."
    echo
    table "$json" ms
    echo
    echo "**Ratio agentuser / runuser: $(ratio "$json" agentuser runuser)x** (target: at most 1.25x;"
    echo "medians: $(median_ratio "$json" agentuser runuser)x)."
    echo "**Ratio agentuser / sudo: $(ratio "$json" agentuser sudo)x** (target: below 1)."
    echo "Ratio agentuser / setpriv (floor): $(ratio "$json" agentuser setpriv)x;"
    echo "agentuser --network none / runuser: $(ratio "$json" 'agentuser --network none' runuser)x;"
    echo "**agentuser --network allowlist (the default) / runuser: $(ratio "$json" 'agentuser --network allowlist' runuser)x** (target: at most 1.5x;"
    echo "medians: $(median_ratio "$json" 'agentuser --network allowlist' runuser)x)."
    echo
    echo "Ratios are of means unless said otherwise."
} > "$out"
cat "$out"
