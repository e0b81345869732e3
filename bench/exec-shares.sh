#!/usr/bin/env bash
# Start-up cost of `exec NAME -- /bin/true` against the size of the agent's shares: the same
# agent with one empty read-write share, then with one read-write share of 100,000 files
# (1,000 directories of 100 files, as bench/share.sh, plus three git repositories of the
# owner), then with 100,000 files in 10,000 directories (node_modules-like), then the same
# with a file made or removed in one directory before every run (the share tracker reports
# that directory, which the run lists), with runuser as the reference. Target (issue 15
# item 9): at most 1.3x the empty share.
# Hermetic (bench/lib.sh). Run as root: bench/exec-shares.sh   Writes bench/results/exec-shares.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_setup
out=bench/results/exec-shares.md
json=$BENCH_DIR/exec-shares.json
runs=${RUNS:-200}
mkdir -p "$BENCH_DIR/home/benchowner"
python3 - "$BENCH_DIR/home/benchowner" <<'PY'
import os, sys
root = sys.argv[1]
os.mkdir(os.path.join(root, "empty"))
def tree(name, dirs, files):
    base = os.path.join(root, name)
    os.mkdir(base)
    for d in range(dirs):
        p = os.path.join(base, f"d{d // 100:03}", f"d{d:05}") if dirs > 1000 else os.path.join(base, f"d{d:04}")
        os.makedirs(p)
        for f in range(files):
            with open(os.path.join(p, f"f{f:03}"), "w") as fh:
                fh.write("x")
tree("wide", 1000, 100)
tree("deep", 10000, 10)
PY
in_sandbox "
getent passwd agentuser-net >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin agentuser-net
getent passwd agentuser-track >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin agentuser-track
useradd -M -d /home/benchowner -U benchowner
for t in wide deep; do for r in a b c; do git init -q /home/benchowner/\$t/d0001/repo-\$r 2>/dev/null || git init -q /home/benchowner/\$t/d000/d00001/repo-\$r; done; done
chown -R benchowner:benchowner /home/benchowner
export SUDO_UID=\$(id -u benchowner)
for t in empty wide deep; do \$BIN create \$t --owner benchowner >/dev/null; \$BIN share \$t /home/benchowner/\$t --rw >/dev/null; done
unset SUDO_UID
flip='f=/home/benchowner/deep/d050/d05000/between-runs; if [ -e \$f ]; then rm \$f; else : > \$f; fi'
hyperfine -N --style basic --warmup 20 --runs $runs --export-json $json --export-markdown $BENCH_DIR/table.md \
  -p true -p true -p true -p true -p \"sh -c '\$flip'\" \
  -n runuser 'runuser -u agent-empty -- /bin/true' \
  -n 'empty share' '$BIN exec empty --network none -- /bin/true' \
  -n '100,000 files in 1,000 dirs' '$BIN exec wide --network none -- /bin/true' \
  -n '100,000 files in 10,000 dirs' '$BIN exec deep --network none -- /bin/true' \
  -n '10,000 dirs, a file made between runs' '$BIN exec deep --network none -- /bin/true' </dev/null
"
{
    echo "# exec start-up against the size of the shares"
    echo
    echo "$(date -u +%F), $(nproc) cores, $(uname -r), load average $(cut -d" " -f1-3 /proc/loadavg) at the end; one hyperfine run of $runs iterations each,"
    echo "\`exec NAME --network none -- /bin/true\` as root, one read-write share per agent (owned"
    echo "by another user, three git repositories of the owner in the big ones)."
    echo
    cat "$BENCH_DIR/table.md"
    echo
    echo "**100,000 files in 1,000 directories / empty share: $(ratio "$json" '100,000 files in 1,000 dirs' 'empty share')x** (target: at most 1.3x)."
    echo "**100,000 files in 10,000 directories / empty share: $(ratio "$json" '100,000 files in 10,000 dirs' 'empty share')x**;"
    echo "with a file made or removed in one directory before each run: $(ratio "$json" '10,000 dirs, a file made between runs' 'empty share')x."
    echo "Empty share / runuser: $(ratio "$json" 'empty share' runuser)x."
} > "$out"
cat "$out"
