#!/usr/bin/env bash
# `git status` and `git commit -a` in a 10,000-file repository: the agent's, in its view
# (its own git directory over the owner's .git, borrowing the owner's objects), side by side
# with the owner's own, in the same work tree. hyperfine runs inside each side (as the owner
# with runuser, as the agent inside `agentuser exec`), so the figures are git's alone, not
# the cost of starting a run (bench/exec.sh measures that). Hermetic (bench/lib.sh).
# Run as root from anywhere: bench/git.sh   Writes bench/results/git.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_setup
out=bench/results/git.md
runs=${RUNS:-40}
in_sandbox "
set -e
useradd -m -K HOME_MODE=0700 benchowner
$BIN create bench --owner benchowner >/dev/null
runuser -u benchowner -- env HOME=/home/benchowner sh -c '
  set -e
  git config --global user.name Owner; git config --global user.email owner@example.org
  git config --global init.defaultBranch main
  mkdir /home/benchowner/proj && cd /home/benchowner/proj && git init -q
  for d in \$(seq 1 100); do mkdir d\$d; for f in \$(seq 1 100); do echo \"\$d \$f\" > d\$d/f\$f.txt; done; done
  git add . && git commit -qm base'
$BIN share bench /home/benchowner/proj --rw >/dev/null
# The first run makes the agent's git directory (a copy of the owner's index).
$BIN exec bench --cwd /home/benchowner/proj -- git status --short >/dev/null
hf='hyperfine -N --style basic --warmup 3 --runs $runs'
runuser -u benchowner -- env HOME=/home/benchowner sh -c \"cd /home/benchowner/proj && \$hf \
  --export-json /home/benchowner/status.json -n status 'git status' >/dev/null && \
  hyperfine --style basic --warmup 3 --runs $runs --prepare 'echo x >> d1/f1.txt' \
  --export-json /home/benchowner/commit.json -n commit 'git commit -qam change' >/dev/null\"
$BIN exec bench --cwd /home/benchowner/proj -- sh -c \"\$hf \
  --export-json \\\$HOME/status.json -n status 'git status' >/dev/null && \
  hyperfine --style basic --warmup 3 --runs $runs --prepare 'echo x >> d1/f2.txt' \
  --export-json \\\$HOME/commit.json -n commit 'git commit -qam change' >/dev/null\"
for w in status commit; do
  cp /home/benchowner/\$w.json $BENCH_DIR/owner-\$w.json
  cp /var/lib/agentuser/homes/agent-bench/\$w.json $BENCH_DIR/agent-\$w.json
done
"
mean() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["mean"])' "$1"
}
row() {
    local o a
    o=$(mean "$BENCH_DIR/owner-$1.json") a=$(mean "$BENCH_DIR/agent-$1.json")
    python3 -c 'import sys; o,a=map(float,sys.argv[2:]); print(f"| `{sys.argv[1]}` | {o*1000:.1f} ms | {a*1000:.1f} ms | **{a/o:.2f}x** |")' "$2" "$o" "$a"
}
{
    echo "# git in the agent's view vs the owner's own"
    echo
    echo "$(date -u +%F), $(nproc) cores, $(uname -r), $(git --version); a repository of 10,000 files"
    echo "in 100 directories. hyperfine ($runs runs, 3 warm-up) runs inside each side: as the owner"
    echo "(runuser), and as the agent inside \`agentuser exec\` (its own git directory mounted over the"
    echo "owner's .git, objects borrowed through alternates from a read-only mount). \`commit -a\`"
    echo "changes one file before each run."
    echo
    echo "| command | owner | agent | agent / owner |"
    echo "|---|---|---|---|"
    row status 'git status'
    row commit 'git commit -a'
    echo
    echo "Target: at most 1.2x."
} > "$out"
cat "$out"
