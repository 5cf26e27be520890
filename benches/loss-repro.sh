#!/usr/bin/env bash
# The 1,000-device / 2,000-event load of benches/e2e-vs-nchan.sh, repeated
# on a fresh server each time, with every server log kept: to look for
# events a device never got, and to see why (benches/RESULTS.md, "The 25,170
# lost events").
#
#   benches/loss-repro.sh OUT RUNS ack|fan [pere-server flags...]
#   benches/loss-repro.sh /tmp/loss 20 ack
#   benches/loss-repro.sh /tmp/q4 3 ack --queue-capacity 4     # provoke slow-device disconnects
#   SUB_EXTRA=--resume benches/loss-repro.sh /tmp/q4r 3 ack --queue-capacity 4
#   DURATION=12s benches/loss-repro.sh /tmp/dl 3 ack            # a deadline before the end
#
# ack: devices acknowledge every event (--ack), as case acks1k; fan: no
# receipts, as fan1k. Prints one line per run; OUT/runN.{srv.log,sub.json,
# sub.err,pub.json} keep everything. Needs a release build. Loopback only;
# each server is stopped by its pid; every wait is bounded (--duration on
# both tools, 120 s for the devices to be ready).
set -u
OUT=$1; RUNS=$2; MODE=$3; shift 3
SRV_ARGS=("$@")
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN=${BIN:-$ROOT/target/release}
DEVICES=${DEVICES:-1000}; EVENTS=${EVENTS:-2000}; SIZE=${SIZE:-128}
SUB_EXTRA=${SUB_EXTRA:-}
mkdir -p "$OUT"
srv=""
trap '[ -n "$srv" ] && kill -TERM "$srv" 2>/dev/null' EXIT
for r in $(seq 1 "$RUNS"); do
    port=$((5100 + RANDOM % 800))
    for _ in $(seq 1 20); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
        port=$((5100 + RANDOM % 800))
    done
    p="$OUT/run$r"
    RUST_LOG=${SRV_LOG:-info} "$BIN/pere-server" --memory --port "$port" "${SRV_ARGS[@]}" >"$p.srv.log" 2>&1 &
    srv=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    ack=(); [ "$MODE" = ack ] && ack=(--ack)
    # shellcheck disable=SC2086
    "$BIN/pere-sub" "127.0.0.1:$port" "loss$r" --devices "$DEVICES" --count "$EVENTS" \
        --duration "${DURATION:-240s}" "${ack[@]}" $SUB_EXTRA >"$p.sub.json" 2>"$p.sub.err" &
    sub=$!
    ready=0
    for _ in $(seq 1 600); do
        grep -q "devices ready (" "$p.sub.err" 2>/dev/null && { ready=1; break; }
        sleep 0.2
    done
    sleep 0.5
    "$BIN/pere-pub" "127.0.0.1:$port" "loss$r" --count "$EVENTS" --concurrency 4 --size "$SIZE" \
        --duration 240s -q >"$p.pub.json" 2>"$p.pub.err"
    wait "$sub"
    kill -TERM "$srv" 2>/dev/null; wait "$srv" 2>/dev/null; srv=""
    python3 - "$p" "$ready" <<'PY'
import json, sys
p, ready = sys.argv[1:]
def last(f):
    try:
        return json.loads(open(f).read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return {}
d, q = last(p + ".sub.json"), last(p + ".pub.json")
full = sum("queue is full" in line for line in open(p + ".srv.log"))
keys = ["deliveries", "lost", "lost_before_first", "lost_in_gaps", "not_arrived_by_deadline",
        "missed_after_disconnect", "unseen_events", "duplicates", "reordered", "disconnects",
        "closed_by_server", "stream_errors", "reconnects", "gaps", "failed", "unreported"]
print(f"{p}: ready={ready} " + " ".join(f"{k}={d.get(k)}" for k in keys)
      + f" published={q.get('published')} publish_failed={q.get('failed')}"
      + f" server_queue_full_lines={full} first_disconnect={d.get('first_disconnect')!r}")
PY
    sleep 1
done
