#!/usr/bin/env bash
# Concurrency: 200 `exec NAME -- /bin/true`, 50 at a time (xargs -P50), side by side with the
# same for `runuser -u AGENT -- /bin/true`; then again while another agent's share and
# unshare of a 1,000-file tree loop in the background. The agent has one (empty)
# read-write share, so every run also records its run marker and watches for planted
# repositories. Target (issue 15 item 8): at most 1.5x runuser for --network none and host;
# allowlist (a policy point and a network namespace per run) is reported on its own.
# Hermetic (bench/lib.sh). Run as root: bench/exec-parallel.sh   Writes bench/results/exec-parallel.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_setup
out=bench/results/exec-parallel.md
# Rounds of a few runs of each command, each round in an order of its own, pooled
# (bench/lib.sh rounds_script, pool): the machine's speed drifts over minutes, and one
# command's runs all in a row would take the drift alone.
rounds=${ROUNDS:-5}
per_round=${PER_ROUND:-2}
runs=$((rounds * per_round))
batch() { echo "bash -c 'seq 200 | xargs -P50 -I{} $1 >/dev/null 2>&1'"; }
for phase in quiet busy; do
    # One warm-up batch of each command per round: a round's first batch would otherwise
    # pay for the caches the previous command left cold.
    rounds_script "$BENCH_DIR/$phase" "$rounds" "$per_round" 1 \
        runuser "$(batch 'runuser -u agent-par -- /bin/true')" \
        'agentuser --network none' "$(batch "$BIN exec par --network none -- /bin/true")" \
        'agentuser --network host' "$(batch "$BIN exec par --network host -- /bin/true")" \
        'agentuser --network allowlist' "$(batch "$BIN exec par --network allowlist -- /bin/true")" \
        >"$BENCH_DIR/$phase.sh"
done
in_sandbox "
getent passwd agentuser-net >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin agentuser-net
getent passwd agentuser-track >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin agentuser-track
useradd -m -d /home/benchowner -U benchowner
mkdir /home/benchowner/work /home/benchowner/busy
for d in \$(seq 10); do mkdir /home/benchowner/busy/d\$d; for f in \$(seq 100); do echo x > /home/benchowner/busy/d\$d/f\$f; done; done
chown -R benchowner:benchowner /home/benchowner
export SUDO_UID=\$(id -u benchowner)
\$BIN create par --owner benchowner >/dev/null
\$BIN create other --owner benchowner >/dev/null
\$BIN share par /home/benchowner/work --rw >/dev/null 2>&1
unset SUDO_UID
cd $BENCH_DIR
bash $BENCH_DIR/quiet.sh
( export SUDO_UID=\$(id -u benchowner); while :; do \$BIN share other /home/benchowner/busy --rw; \$BIN unshare other /home/benchowner/busy; done >/dev/null 2>&1 ) &
loop=\$!
bash $BENCH_DIR/busy.sh
kill \$loop; wait \$loop 2>/dev/null || true
"
# section NAME TITLE: the table of batch NAME and each network mode's ratio to runuser.
section() {
    pool "$BENCH_DIR/$1.json" "$BENCH_DIR/$1".*.json
    echo "## $2"
    echo
    table "$BENCH_DIR/$1.json" ms
    echo
    for n in none host allowlist; do
        echo "- agentuser --network $n / runuser: **$(ratio "$BENCH_DIR/$1.json" "agentuser --network $n" runuser)x**" \
            "(CPU time: $(cpu_ratio "$BENCH_DIR/$1.json" "agentuser --network $n" runuser)x)"
    done
    echo
}

{
    echo "# exec, 50 in parallel, vs runuser"
    echo
    echo "$(date -u +%F), $(nproc) cores, $(uname -r), load average $(cut -d" " -f1-3 /proc/loadavg) at the end; hyperfine, $runs runs of each batch of 200"
    echo "($rounds rounds of $per_round runs of each, after one warm-up, each round in its own order, pooled),"
    echo "commands run 50 at a time (xargs -P50); the agent has one empty read-write share."
    echo
    section quiet "Quiet"
    section busy "While another agent's share/unshare of 1,000 files loops in the background"
    echo "Target: at most 1.5x runuser for none and host (wall time). CPU time is user + system"
    echo "of every process the batch waited for (hyperfine's figures): it leaves out the kernel's"
    echo "deferred work (namespace teardown), and unlike wall time it moves little with the machine's load."
} > "$out"
cat "$out"
