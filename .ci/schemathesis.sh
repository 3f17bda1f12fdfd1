#!/usr/bin/env bash
# Runs schemathesis against a real `pegabridge serve` (SQLite, the example configuration) with
# the served OpenAPI description: no 5xx, and every answer as described. Bounded: a few
# examples per operation and a time limit. (The coverage phase is left out: schemathesis 4.32
# sometimes fails inside it, in hypothesis, before sending anything.) Needs the debug binary (cargo test builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v schemathesis >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==4.32.5" >/dev/null 2>&1 || true
fi
if ! command -v schemathesis >/dev/null; then
  echo "schemathesis is missing (pip install schemathesis): the OpenAPI fuzz run is skipped" >&2
  exit 1
fi
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/pegabridge"
[ -x "$bin" ] || cargo build --quiet
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; wait "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r pegabridge.toml templates mappings "$work/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The internet-facing routes are configured too (tracking, a Basic-auth platform), so the
# run reaches their handlers, not only their 404s. `exec`: $pid is serve itself, killed on exit.
(
  cd "$work"
  PEGABRIDGE_SERVER__LISTEN="127.0.0.1:$port" PEGABRIDGE_TRIGGER_TOKEN=fuzz-token \
    PEGABRIDGE_ACTIVITIES__TOKEN=fuzz-token PEGABRIDGE_ADMIN__TOKEN=fuzz-token \
    PEGABRIDGE_TRACKING__BASE_URL="http://127.0.0.1:$port" \
    PEGABRIDGE_TRACKING__SECRET=fuzz-tracking-secret-of-at-least-32-chars \
    PEGABRIDGE_EVENTS__POSTMARK__USERNAME=fuzz PEGABRIDGE_EVENTS__POSTMARK__PASSWORD=fuzz-password-1234 \
    exec "$bin" serve >serve.log 2>&1
) &
pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
timeout 600 schemathesis run "http://127.0.0.1:$port/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,fuzzing,stateful --max-examples 30 --workers 2 --request-timeout 10 \
  -H "Authorization: Bearer fuzz-token" \
  --seed "${SCHEMATHESIS_SEED:-1}" --no-color
status=$?
if grep -q "panicked" "$work/serve.log"; then
  echo "serve panicked during the run:" >&2
  grep -A5 panicked "$work/serve.log" >&2
  exit 1
fi
exit $status
