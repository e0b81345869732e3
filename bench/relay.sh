#!/usr/bin/env bash
# The pty relay's throughput with the terminal-sequence filter (docs/threat-model.md row 2) against
# the same relay without it (the binary of BASELINE, default: the commit before the filter)
# and against a plain uid switch on the same outer terminal. Each run cats a 32 MiB file of
# coloured UTF-8 text, with escape sequences every line, to a terminal that `script` provides
# (output to /dev/null). Run as root: bench/relay.sh   Writes bench/results/relay.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_setup
baseline=${BASELINE:-601e40b~1}  # the commit before the filter
out=bench/results/relay.md
json=$BENCH_DIR/relay.json
runs=${RUNS:-30}
# The baseline binary, built from a pristine copy of that commit.
mkdir "$BENCH_DIR/baseline-src"
git archive "$baseline" | tar -x -C "$BENCH_DIR/baseline-src"
(cd "$BENCH_DIR/baseline-src" &&
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/bench-baseline" cargo build --release --locked -q &&
    install -m 4755 "${CARGO_TARGET_DIR:-$PWD/target}/bench-baseline/release/agentuser" "$BENCH_DIR/bin/agentuser-unfiltered")
data=$BENCH_DIR/data.txt
python3 - "$data" <<'PY'
import sys
line = ("\x1b[1;32mok\x1b[0m  src/runner/term_filter.rs  Straße naïve 日本語 \x1b]8;;file:///x\x1b\\link\x1b]8;;\x1b\\ "
        "\x1b[38;2;200;100;50m" + "x" * 40 + "\x1b[0m\r\n")
with open(sys.argv[1], "w") as f:
    n = 0
    while n < 32 << 20:
        f.write(line)
        n += len(line.encode())
PY
chmod 644 "$data"
in_sandbox "
$BIN create bench >/dev/null
hyperfine -N --style basic --warmup 3 --runs $runs --export-json $json --export-markdown $BENCH_DIR/table.md \
  -n 'setpriv (no relay)' 'script -qec \"setpriv --reuid agent-bench --regid agent-bench --init-groups cat $data\" /dev/null' \
  -n 'agentuser, no filter' 'script -qec \"$BENCH_DIR/bin/agentuser-unfiltered exec bench -- cat $data\" /dev/null' \
  -n 'agentuser, filter' 'script -qec \"$BIN exec bench -- cat $data\" /dev/null' </dev/null >/dev/null
"
{
    echo "# pty relay with and without the terminal-sequence filter"
    echo
    echo "$(date -u +%F), $(nproc) cores, $(uname -r); one hyperfine run of $runs iterations each,"
    echo "as root. Each command cats a 32 MiB file of coloured UTF-8 text (SGR and OSC 8 on every"
    echo "line) to a pseudo-terminal that \`script\` provides; \`agentuser exec\` adds its own pty and"
    echo "relay between the two. \"no filter\" is the binary of $(git rev-parse --short "$baseline"), the"
    echo "commit before the filter; setpriv is the floor (the agent writes to script's pty directly)."
    echo
    cat "$BENCH_DIR/table.md"
    echo
    echo "**Ratio filter / no filter: $(ratio "$json" 'agentuser, filter' 'agentuser, no filter')x** (target: no measurable difference)."
} > "$out"
cat "$out"
