#!/usr/bin/env bash
# PERE against nginx + nchan, side by side, with the same load tool, the same
# payloads and the same loads (issue 5). Prints one table with the ratios.
#
#   benches/e2e-vs-nchan.sh            # every case
#   CASES="fan1k idle" benches/e2e-vs-nchan.sh
#   SKIP_BUILD=1 NCHAN=0 benches/e2e-vs-nchan.sh   # PERE only
#
# Server CPU is utime+stime from /proc/PID/stat (nginx: master + workers),
# taken from when every device's stream is open to when the last device is
# done, so the load tool's own CPU and the ramp are not counted. Memory is
# PSS from /proc/PID/smaps_rollup (nginx: summed over master + workers), as
# the delta over the idle streams. Loopback only; every process started here
# is stopped by its pid; every run is bounded (--count and --duration).
#
# Needs: a release build (done here unless SKIP_BUILD=1), python3, and for
# nchan `apt-get install -y nginx libnginx-mod-nchan` and
# /work/shared/peers/nchan/run.sh (NCHAN_DIR to point elsewhere).
set -euo pipefail

# Settings come from the environment (above); any argument asks for this help,
# so that `--help` does not start a long run.
if [ "$#" -gt 0 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release"
NCHAN_DIR="${NCHAN_DIR:-/work/shared/peers/nchan}"
PERE_PORT="${PERE_PORT:-4590}"
NCHAN_PORT=8090
# idle first: its PSS delta is only meaningful on a fresh server (after a
# load, the allocator's free memory absorbs new streams and hides their cost).
CASES="${CASES:-idle fan1k fan10k chan1k rate10k acks1k acks1k20}"
OUT="${OUT:-$(mktemp -d /tmp/pere-vs-nchan.XXXXXX)}"
PUBLISHERS="${PUBLISHERS:-4}"
SIZE="${SIZE:-128}"
RUN_ID="r$$"
mkdir -p "$OUT"

log() { echo "== $*" >&2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -q -p pere-server -p pere-pub -p pere-sub)
fi

have_nchan=0
if [ "${NCHAN:-1}" = 1 ] && command -v nginx >/dev/null && [ -x "$NCHAN_DIR/run.sh" ] \
    && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
    have_nchan=1
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- process accounting ------------------------------------------------------

pids_of() { # server -> its pids (nginx: master and workers)
    case "$1" in
        pere) echo "$PERE_PID" ;;
        nchan)
            local master; master="$(cat "$NCHAN_DIR/run/run/nginx.pid")"
            echo "$master $(pgrep -P "$master" | tr '\n' ' ')" ;;
    esac
}

cpu_ticks() { # pids... -> "utime stime" in clock ticks, each summed
    local user=0 sys=0 pid f
    for pid in "$@"; do
        # Fields after the `(comm)`: state is 3rd, utime 14th, stime 15th.
        f="$(sed 's/^.*) //' "/proc/$pid/stat")"
        set -- $f
        user=$((user + ${12}))
        sys=$((sys + ${13}))
    done
    echo "$user $sys"
}

pss_kib() { # pids... -> PSS in KiB, summed
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup")))
    done
    echo "$total"
}

HZ="$(getconf CLK_TCK)"

# --- servers -------------------------------------------------------------------

PERE_PID=""
start_pere() {
    "$BIN/pere-server" --memory --port "$PERE_PORT" -q \
        >"$OUT/pere-server.log" 2>&1 &
    PERE_PID=$!
    for _ in $(seq 1 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PERE_PORT") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "pere-server did not start; see $OUT/pere-server.log" >&2
    exit 1
}
stop_pere() {
    if [ -n "$PERE_PID" ]; then
        kill -TERM "$PERE_PID" 2>/dev/null || true
        wait "$PERE_PID" 2>/dev/null || true
        PERE_PID=""
    fi
}
start_nchan() { "$NCHAN_DIR/run.sh" start >&2; }
stop_nchan() { "$NCHAN_DIR/run.sh" stop >&2 || true; }

cleanup() {
    stop_pere
    if [ "$have_nchan" = 1 ]; then stop_nchan; fi
}
trap cleanup EXIT

addr_of() { case "$1" in pere) echo "127.0.0.1:$PERE_PORT" ;; nchan) echo "127.0.0.1:$NCHAN_PORT" ;; esac; }
flag_of() { case "$1" in pere) echo "" ;; nchan) echo "--nchan" ;; esac; }

# --- one load ------------------------------------------------------------------

# run_load SERVER NAME DEVICES CHANNELS EVENTS RATE ACK
# Writes $OUT/NAME.SERVER.{sub,pub}.json and .cpu (server CPU seconds).
run_load() {
    local server=$1 name=$2 devices=$3 channels=$4 events=$5 rate=$6 ack=$7
    local addr flag channel per_device rate_args=() ack_args=()
    addr="$(addr_of "$server")"
    flag="$(flag_of "$server")"
    channel="$RUN_ID$name"
    per_device=$((events / channels))
    [ "$rate" != "-" ] && rate_args=(--rate "$rate")
    case "$ack" in
        1) ack_args=(--ack) ;;
        e) ack_args=(--ack-each --ack-connections 16) ;;
        p) ack_args=(--ack-each --ack-connections 16 --ack-pipeline 64) ;;
    esac
    log "$name on $server: $devices devices, $channels channels, $events events ${rate_args[*]} ${ack_args[*]}"
    local fifo="$OUT/$name.$server.fifo"
    rm -f "$fifo"; mkfifo "$fifo"
    "$BIN/pere-sub" "$addr" "$channel" $flag --devices "$devices" --channels "$channels" \
        --count "$per_device" --duration 240s "${ack_args[@]}" \
        >"$OUT/$name.$server.sub.json" 2>"$fifo" &
    local sub=$!
    # Wait for every stream to be open before publishing (or the loss would
    # be by design), while keeping the rest of stderr in a file.
    local ready=0
    exec 4<"$fifo"
    while IFS= read -r -t 120 line <&4; do
        echo "$line" >>"$OUT/$name.$server.sub.err"
        case "$line" in *"devices ready ("*) ready=1; break ;; esac
    done
    cat <&4 >>"$OUT/$name.$server.sub.err" &
    local drain=$!
    exec 4<&-
    if [ "$ready" != 1 ]; then
        echo "$name/$server: devices never got ready; see $OUT/$name.$server.sub.err" >&2
    fi
    sleep 0.5
    # shellcheck disable=SC2046
    local pids; pids="$(pids_of "$server")"
    local before; before="$(cpu_ticks $pids)"
    "$BIN/pere-pub" "$addr" "$channel" $flag --channels "$channels" --count "$events" \
        --concurrency "$PUBLISHERS" --size "$SIZE" --duration 240s "${rate_args[@]}" -q \
        >"$OUT/$name.$server.pub.json" 2>"$OUT/$name.$server.pub.err" || true
    wait "$sub" || true
    local after; after="$(cpu_ticks $pids)"
    wait "$drain" 2>/dev/null || true
    rm -f "$fifo"
    # The total, then the kernel's part of it (system time: the writes, the
    # loopback receive they run, wake-ups), which no user-space change moves.
    read -r u0 s0 <<<"$before"
    read -r u1 s1 <<<"$after"
    python3 -c "print(($u1 + $s1 - $u0 - $s0) / $HZ)" >"$OUT/$name.$server.cpu"
    python3 -c "print(($s1 - $s0) / $HZ)" >"$OUT/$name.$server.sys"
}

# run_idle SERVER: PSS delta over IDLE_STREAMS idle streams.
IDLE_STREAMS="${IDLE_STREAMS:-10000}"
run_idle() {
    local server=$1 addr flag
    addr="$(addr_of "$server")"
    flag="$(flag_of "$server")"
    log "idle on $server: $IDLE_STREAMS streams"
    # shellcheck disable=SC2046
    local pids; pids="$(pids_of "$server")"
    local before; before="$(pss_kib $pids)"
    local fifo="$OUT/idle.$server.fifo"
    rm -f "$fifo"; mkfifo "$fifo"
    "$BIN/pere-sub" "$addr" "${RUN_ID}idle" $flag --devices "$IDLE_STREAMS" --duration 25s \
        >"$OUT/idle.$server.sub.json" 2>"$fifo" &
    local sub=$!
    exec 4<"$fifo"
    while IFS= read -r -t 120 line <&4; do
        echo "$line" >>"$OUT/idle.$server.sub.err"
        case "$line" in *"devices ready ("*) break ;; esac
    done
    cat <&4 >>"$OUT/idle.$server.sub.err" &
    local drain=$!
    exec 4<&-
    sleep 2
    pids="$(pids_of "$server")"
    local after; after="$(pss_kib $pids)"
    local ready; ready="$(grep -o '[0-9]*/[0-9]* devices ready' "$OUT/idle.$server.sub.err" | head -1 | cut -d/ -f1)"
    echo "$before $after ${ready:-0}" >"$OUT/idle.$server.mem"
    wait "$sub" || true
    wait "$drain" 2>/dev/null || true
    rm -f "$fifo"
}

# --- the cases -----------------------------------------------------------------

# name devices channels events rate ack (0: none; 1: --ack, JSON arrays;
# e: one receipt per request over 16 connections; p: the same, pipelined 64
# deep). dlv1k20 is rcpt1k's load without receipts: what the receipts cost is
# the difference.
declare -A CASE=(
    [fan1k]="1000 1 2000 - 0"
    [fan10k]="10000 1 1000 - 0"
    [chan1k]="10000 1000 20000 - 0"
    [rate10k]="10000 1 100 10 0"
    [rate10k50]="10000 1 500 50 0"
    [acks1k]="1000 1 2000 - 1"
    [acks1k20]="1000 1 400 20 1"
    [dlv1k20]="1000 1 300 20 0"
    [rcpt1k]="1000 1 300 20 e"
    [rcpt1kp]="1000 1 300 20 p"
)
declare -A TITLE=(
    [fan1k]="1 channel x 1,000 subscribers, 2,000 events"
    [fan10k]="1 channel x 10,000 subscribers, 1,000 events"
    [chan1k]="1,000 channels x 10 subscribers, 20,000 events"
    [rate10k]="10,000 subscribers x 10 events/s, 100 events"
    [rate10k50]="10,000 subscribers x 50 events/s, 500 events"
    [acks1k]="1,000 devices acking, 2,000 events (PERE only)"
    [acks1k20]="1,000 devices acking, 20 events/s, 400 events (PERE only)"
    [dlv1k20]="1,000 devices, 20 events/s, 300 events, no receipts"
    [rcpt1k]="1,000 devices, one receipt per request, 20 events/s, 300 events (PERE only)"
    [rcpt1kp]="1,000 devices, one receipt per request pipelined, 20 events/s, 300 events (PERE only)"
    [idle]="${IDLE_STREAMS} idle streams"
)

servers=(pere)
[ "$have_nchan" = 1 ] && servers+=(nchan)
log "output in $OUT; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "start $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/loadavg"

for server in "${servers[@]}"; do
    case "$server" in pere) start_pere ;; nchan) start_nchan ;; esac
    for name in $CASES; do
        if [ "$name" = idle ]; then
            run_idle "$server"
        elif [ -n "${CASE[$name]:-}" ]; then
            read -r devices channels events rate ack <<<"${CASE[$name]}"
            if [ "$ack" != 0 ] && [ "$server" = nchan ]; then continue; fi
            run_load "$server" "$name" "$devices" "$channels" "$events" "$rate" "$ack"
        fi
        sleep 1
    done
    case "$server" in pere) stop_pere ;; nchan) stop_nchan ;; esac
done
echo "end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg"

# --- the table -----------------------------------------------------------------

python3 - "$OUT" "$CASES" <<'EOF'
import json, os, sys
out, cases = sys.argv[1], sys.argv[2].split()
titles = {
    "fan1k": "1 ch x 1,000 subs, 2,000 events",
    "fan10k": "1 ch x 10,000 subs, 1,000 events",
    "chan1k": "1,000 ch x 10 subs, 20,000 events",
    "rate10k": "10,000 subs x 10 ev/s, 100 events",
    "rate10k50": "10,000 subs x 50 ev/s, 500 events",
    "acks1k": "1,000 devices acking, 2,000 events",
    "acks1k20": "1,000 devices acking, 20 ev/s, 400 events",
    "dlv1k20": "1,000 devices, 20 ev/s, 300 events, no receipts",
    "rcpt1k": "1,000 devices, 1 receipt per request x 16 conns, 20 ev/s, 300 events",
    "rcpt1kp": "the same, requests pipelined 64 deep",
    "idle": "10,000 idle streams",
}
def load(name, server, kind):
    try:
        with open(f"{out}/{name}.{server}.{kind}") as f:
            text = f.read().strip()
        return json.loads(text.splitlines()[-1]) if kind.endswith("json") else text
    except (OSError, ValueError, IndexError):
        return None
def fmt(v, unit=""):
    if v is None: return "-"
    if isinstance(v, float): v = round(v, 2) if v < 100 else round(v)
    return f"{v:,}{unit}" if isinstance(v, int) else f"{v}{unit}"
def ratio(a, b, higher_better=True):
    if not a or not b: return "-"
    return f"{a / b:.2f}x" if higher_better else f"{b / a:.2f}x"
rows = []
for name in cases:
    if name == "idle":
        m = {}
        for s in ("pere", "nchan"):
            t = load(name, s, "mem")
            if t:
                before, after, ready = map(int, t.split())
                m[s] = (after - before) / max(ready, 1), ready
        p, n = m.get("pere"), m.get("nchan")
        rows.append(f"| {titles[name]} | PSS/stream | {fmt(p and round(p[0], 2), ' KiB')} ({p and p[1]} open) | {fmt(n and round(n[0], 2), ' KiB')} ({n and n[1]} open) | {ratio(p and p[0], n and n[0], False)} smaller |")
        continue
    r = {}
    for s in ("pere", "nchan"):
        sub, cpu = load(name, s, "sub.json"), load(name, s, "cpu")
        if sub is None or cpu is None:
            continue
        cpu = float(cpu)
        sys_cpu = load(name, s, "sys")
        # What devices did not get, by why (see pere_load::devices):
        # holes, still owed at the deadline, after a disconnect.
        missing = {k: sub.get(k, 0) for k in ("lost", "not_arrived_by_deadline", "missed_after_disconnect")}
        bad = sum(missing.values()) + sub["duplicates"] + sub["reordered"]
        detail = (f" lost {missing['lost']} late {missing['not_arrived_by_deadline']}"
                  f" missed-after-disconnect {missing['missed_after_disconnect']}"
                  f" (disconnects {sub['disconnects']}, unseen {sub.get('unseen_events', 0)})"
                  f" dup {sub['duplicates']} reord {sub['reordered']}")
        # A failed publish is an event no device can get: say so.
        pub = load(name, s, "pub.json") or {}
        if pub.get("failed"):
            bad += 1
            detail += f"; {pub['failed']} publishes failed"
        r[s] = {
            "dps": sub["deliveries"] / cpu if cpu > 0 else 0.0,
            "cpu": cpu,
            "sys": float(sys_cpu) if sys_cpu else None,
            "p99": sub["latency_us"]["p99"] / 1000,
            "p50": sub["latency_us"]["p50"] / 1000,
            "ok": f"{sub['deliveries']:,}/{sub['expected']:,}" + ("" if bad == 0 else detail),
            "rcpt": sub.get("receipts"),
        }
    p, n = r.get("pere"), r.get("nchan")
    cell = lambda x, k, u="": fmt(x and x[k], u)
    rows.append(f"| {titles[name]} | deliveries/server CPU-s | {cell(p,'dps')} ({cell(p,'cpu',' s')}) | {cell(n,'dps')} ({cell(n,'cpu',' s')}) | {ratio(p and p['dps'], n and n['dps'])} |")
    ks = lambda x: x and x["sys"] is not None and f"{x['sys']:.2f} s ({100 * x['sys'] / x['cpu']:.0f} %)" if x and x["cpu"] else None
    rows.append(f"| | of which kernel (system time) | {fmt(ks(p))} | {fmt(ks(n))} | |")
    rows.append(f"| | p99 (p50) latency | {cell(p,'p99',' ms')} ({cell(p,'p50',' ms')}) | {cell(n,'p99',' ms')} ({cell(n,'p50',' ms')}) | {ratio(p and p['p99'], n and n['p99'], False)} lower |")
    rows.append(f"| | delivered / expected | {cell(p,'ok')} | {cell(n,'ok')} | |")
    if p and p["rcpt"]:
        rc = p["rcpt"]
        rows.append(f"| | receipts: acked, /s wall, /server CPU-s, p99 all-acked | {rc['acked']:,}, {fmt(rc['per_second'])}/s, {fmt(rc['acked'] / p['cpu'])}/CPU-s, {fmt(rc['all_acked_us']['p99'] / 1000, ' ms')} | - | |")
        base = load("dlv1k20", "pere", "cpu")
        if name.startswith("rcpt") and base and p["cpu"] > float(base):
            net = p["cpu"] - float(base)
            rows.append(f"| | receipts per CPU-s beyond the deliveries (CPU minus dlv1k20's {float(base):.2f} s) | {fmt(rc['acked'] / net)}/CPU-s ({1e6 * net / max(rc['acked'], 1):.1f} us each) | - | |")
with open(f"{out}/loadavg") as f:
    la = f.read().split()
print(f"load average: start {' '.join(la[1:4])}, end {' '.join(la[5:8])}")
print("| load | measure | PERE | nchan | PERE vs nchan |")
print("|---|---|---|---|---|")
print("\n".join(rows))
EOF
