#!/bin/bash
# `serve` under valgrind's callgrind, for the benches' BENCH_BIN, with callgrind-attach.sh as
# BENCH_ATTACH: the instructions `serve` executes during one load, counted the same whatever
# else the machine is doing. With SQLite only (PEGABRIDGE_TEST_POSTGRES_URL unset):
#   BENCH_BIN=benches/callgrind-serve.sh BENCH_ATTACH="benches/callgrind-attach.sh {pid}" \
#     BENCH_ATTACH_TO=saturation cargo bench --bench cost
# writes target/callgrind/cg.PID.1 for each run; its `summary:` line divided by the load's
# events (the cost bench's saturated load: 10,000) is the instructions per event, and
# `callgrind_annotate --inclusive=yes FILE` shows where they go. CALLGRIND_BIN names another
# build of `serve` to count (an earlier commit's, to compare). (CPU figures the bench prints
# meanwhile mean nothing: valgrind runs `serve` some fifty times slower.)
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$here/target/callgrind"
exec valgrind --tool=callgrind --callgrind-out-file="$here/target/callgrind/cg.%p" \
    "${CALLGRIND_BIN:-$here/target/release/pegabridge}" "$@"
