#!/usr/bin/env bash
# `agentuser audit` of one agent over an owner home of 100,000 files (0755 home, 0644
# files, a few secrets), side by side with `find HOME -readable` run as the agent's uid: the
# cheapest standard tool answering "what can this uid read there". The audit does more (both
# views, secret classification, the writable scan, socket connect tests), so the ratio is an
# upper bound on its walk's overhead.
# Run as root from anywhere: bench/audit.sh   (FILES=N to change the size)
# Writes bench/results/audit.md. Hermetic: accounts and files live in the sandbox only.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_setup
FILES=${FILES:-100000}
out=bench/results/audit.md
json=$BENCH_DIR/audit.json
cat > "$BENCH_DIR/tree.py" <<'PY'
import os, sys
home, total = sys.argv[1], int(sys.argv[2])
per_dir = 100
for i in range(total):
    d = os.path.join(home, f"proj{i // 10000}", f"dir{i // per_dir}")
    if i % per_dir == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file{i % per_dir}.txt"), "w") as f:
        f.write("x")
os.makedirs(os.path.join(home, ".aws"), exist_ok=True)
for rel, text in [(".netrc", "machine x login y password z\n"),
                  (".aws/credentials", "[default]\naws_secret_access_key=x\n"),
                  (".bashrc", "export GITHUB_TOKEN=ghp_x\n")]:
    with open(os.path.join(home, rel), "w") as f:
        f.write(text)
PY
in_sandbox "
useradd -m -K HOME_MODE=0755 -s /bin/sh benchowner
python3 $BENCH_DIR/tree.py /home/benchowner $FILES
chown -R benchowner: /home/benchowner
chmod -R a+rX /home/benchowner
$BIN create bench --owner benchowner >/dev/null
hyperfine --style basic --warmup 2 --runs 10 --ignore-failure \
  --export-json $json --export-markdown $BENCH_DIR/table.md \
  -n audit '$BIN audit bench --json >/dev/null' \
  -n find 'setpriv --reuid agent-bench --regid agent-bench --clear-groups -- find /home/benchowner -readable >/dev/null'
$BIN audit bench > $BENCH_DIR/report.txt || true
"
r=$(ratio "$json" audit find)
{
    echo "# audit vs find -readable (as the agent) over a home of $FILES files"
    echo
    echo "$(date -u +%F), $(nproc) cores, $(uname -r); one hyperfine run of 10 iterations each."
    echo "audit exits 1 here (the home leaks secrets), hence --ignore-failure."
    echo
    cat "$BENCH_DIR/table.md"
    echo
    echo "**Ratio audit / find: ${r}x** (target: at most 2x)."
    echo
    echo "What that audit reported (table form):"
    echo
    echo '```'
    cat "$BENCH_DIR/report.txt"
    echo '```'
} > "$out"
cat "$out"
