#!/bin/bash
# For BENCH_ATTACH with callgrind-serve.sh as BENCH_BIN (see there): zeroes `serve`'s counts
# when the load starts and writes them out when the bench stops this script (SIGINT).
pid=$1
callgrind_control -z "$pid" >/dev/null
dump() {
    callgrind_control -d "$pid" >/dev/null
    exit 0
}
trap dump INT
while :; do sleep 0.1; done
