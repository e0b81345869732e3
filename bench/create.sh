#!/usr/bin/env bash
# create + delete of one agent, side by side with plain groupadd/useradd/userdel -r doing
# the same account work (own group with gid = uid, 0700 home from /etc/skel).
# Run as root from anywhere: bench/create.sh   Writes bench/results/create.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_setup
out=bench/results/create.md
json=$BENCH_DIR/create.json
in_sandbox "
hyperfine --style basic --warmup 3 --runs 40 --export-json $json --export-markdown $BENCH_DIR/table.md \
  -n agentuser '$BIN create bench && $BIN delete bench' \
  -n useradd 'groupadd --system -g 1900999990 benchref && useradd --system --no-log-init -u 1900999990 -g 1900999990 -d /var/lib/agentuser/homes/benchref -m -K HOME_MODE=0700 -s /bin/bash benchref 2>/dev/null && userdel -r benchref 2>/dev/null'
"
r=$(ratio "$json" agentuser useradd)
{
    echo "# create + delete vs useradd/userdel"
    echo
    echo "$(date -u +%F), $(nproc) cores, $(uname -r); one hyperfine run of 40 iterations each."
    echo
    cat "$BENCH_DIR/table.md"
    echo
    echo "**Ratio agentuser / useradd: ${r}x** (target: at most 1.3x)."
} > "$out"
cat "$out"
