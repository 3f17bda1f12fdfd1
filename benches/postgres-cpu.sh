#!/bin/bash
# The CPU each `postgres` process (server, background workers, every connection's backend)
# used while this script ran, printed when it is stopped with SIGINT. Made for the benches'
# BENCH_ATTACH, which starts it when a load starts and stops it when the load ends:
#   BENCH_ATTACH=benches/postgres-cpu.sh PEGABRIDGE_TEST_POSTGRES_URL=... cargo bench --bench cost
set -u
tick_ms=$((1000 / $(getconf CLK_TCK)))
snap() {
    for p in $(pgrep -x postgres); do
        [ -r "/proc/$p/stat" ] || continue
        printf '%s %s %s\n' "$p" "$(awk '{print $14 + $15}' "/proc/$p/stat")" \
            "$(tr '\0' ' ' < "/proc/$p/cmdline" | cut -c1-70)"
    done
}
before=$(snap)
report() {
    snap | awk -v before="$before" -v ms="$tick_ms" '
        BEGIN { n = split(before, lines, "\n"); for (i = 1; i <= n; i++) { split(lines[i], f, " "); t[f[1]] = f[2] } }
        { d = $2 - (($1 in t) ? t[$1] : 0); pid = $1; $1 = ""; $2 = "";
          if (d > 0) printf "postgres %s: %d ms%s\n", pid, d * ms, $0 }'
    exit 0
}
trap report INT
while :; do sleep 0.1; done
