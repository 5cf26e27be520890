#!/usr/bin/env bash
# PERE on several nodes (issue 15): the same loads on 1 embedded node
# (`--memory`) and on 1, 2 and 3 cluster nodes sharing one redis-server
# (`--cluster redis://…`), subscribers spread evenly over the nodes (one
# `pere-sub --devices` per node), events published on node 0 by one
# `pere-pub --concurrency`. Prints one table on stdout.
#
#   benches/cluster.sh                          # every topology, every case
#   TOPOLOGIES="embedded c1" CASES=rate1k benches/cluster.sh
#   SKIP_BUILD=1 OUT=/tmp/cbench benches/cluster.sh
#
# Topologies: embedded (one `pere-server --memory`), c1, c2, c3 (1, 2, 3
# nodes on one Redis). Cases, the same on every topology:
#   fan1k   1 channel x 1,000 subscribers, 1,000 events, full speed
#   rate1k  1 channel x 1,000 subscribers, 500 events at 50/s (10 s)
#   rate100 1 channel x 100 subscribers, 500 events at 50/s (10 s)
#           (rate1k vs rate100: Redis commands per publish vs subscribers)
#   acks1k  1,000 devices acking every event (--ack), 300 events, full speed
#   pub     no subscribers; one pere-pub per node (own channel, PUB_CONCURRENCY
#           publishers each) for PUB_SECONDS: what the Redis primary takes
#   pub0    no subscribers; only node 0 publishes (c2, c3): the CPU a node
#           that only follows the log spends per publish
#   follow  acks1k with every device and publisher on node 0 (c2, c3): the
#           CPU a node with no clients spends following receipts and cursors
#
# Every case gets a fresh Redis (AOF, appendfsync always, no RDB, on a free
# loopback port in a temp dir under OUT) and fresh nodes, so no case pays
# for the log of the one before. CPU is utime+stime from /proc/PID/stat of
# each node and of redis-server, from when every stream is open until the
# last device is done. Redis commands are INFO commandstats deltas over the
# same window (commands run inside scripts included, INFO itself not),
# divided by the publishes. Latency runs from the send time in the payload
# to the device's read, on this one machine's clock. Loopback only; every
# process started here is stopped by its pid; every run is bounded
# (--count and --duration). Node logs (warnings and errors) are kept in OUT,
# Redis's logs too; its AOF is measured, then deleted (KEEP_AOF=1 keeps it).
# The disk's synchronous write latency (dd oflag=dsync, 4 KiB) is measured at
# the start and the end: with appendfsync always it bounds Redis's appends.
#
# Settings: OUT (default a new /tmp/pere-cluster.XXXXXX), TOPOLOGIES, CASES,
# PUBLISHERS (4: pere-pub --concurrency for the subscriber cases), SIZE (128),
# PUB_CONCURRENCY (32), PUB_SECONDS (8), SUB_DURATION (45s: the bound of a
# device's run), REDIS_FSYNC (always), SKIP_BUILD=1, TABLE_ONLY=1 (print the
# table of an earlier run's OUT again, run nothing).
#
# Needs: a release build (done here unless SKIP_BUILD=1), redis-server and
# redis-cli (Debian's redis-server), python3, curl.
set -euo pipefail

# Settings come from the environment (above); any argument asks for this help,
# so that `--help` does not start a long run.
if [ "$#" -gt 0 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release"
TOPOLOGIES="${TOPOLOGIES:-embedded c1 c2 c3}"
CASES="${CASES:-fan1k rate1k rate100 acks1k follow pub pub0}"
OUT="${OUT:-$(mktemp -d /tmp/pere-cluster.XXXXXX)}"
PUBLISHERS="${PUBLISHERS:-4}"
SIZE="${SIZE:-128}"
PUB_CONCURRENCY="${PUB_CONCURRENCY:-32}"
PUB_SECONDS="${PUB_SECONDS:-8}"
SUB_DURATION="${SUB_DURATION:-45s}"
REDIS_FSYNC="${REDIS_FSYNC:-always}"
RUN_ID="b$$"
mkdir -p "$OUT"

log() { echo "== $*" >&2; }

for tool in redis-server redis-cli python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done

# --- the table -------------------------------------------------------------------

table() {
    python3 - "$OUT" "$TOPOLOGIES" "$CASES" "$HZ" <<'EOF'
import json, os, re, sys
out, topologies, cases, hz = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), float(sys.argv[4])
NODES = {"embedded": 1, "c1": 1, "c2": 2, "c3": 3}
HEAD = {"embedded": "1 embedded (--memory)", "c1": "1 cluster node", "c2": "2 cluster nodes", "c3": "3 cluster nodes"}

def last_json(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None

def kv(path):
    try:
        with open(path) as f:
            return {l.split()[0]: l.split()[1:] for l in f if l.strip()}
    except OSError:
        return None

def redis_stats(path):
    calls, stats = {}, {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                m = re.match(r"cmdstat_([a-z|_-]+):calls=(\d+)", line)
                if m:
                    calls[m.group(1)] = int(m.group(2))
                elif ":" in line and not line.startswith("#"):
                    k, v = line.split(":", 1)
                    stats[k] = v
    except OSError:
        return None
    return calls, stats

def load(topo, name):
    base = f"{out}/{topo}.{name}"
    b, a = kv(base + ".before"), kv(base + ".after")
    if not b or not a:
        return None
    n = NODES[topo]
    r = {"n": n}
    r["wall"] = float(a["wall"][0]) - float(b["wall"][0])
    busy = int(a["machine"][0]) - int(b["machine"][0])
    r["busy_cores"] = busy / hz / r["wall"] if r["wall"] > 0 else 0
    r["cpu"] = []
    for i in range(n):
        x, y = int(b[f"node{i}"][0]), int(a[f"node{i}"][0])
        r["cpu"].append((y - x) / hz if x >= 0 and y >= 0 else None)
    r["redis_cpu"] = (int(a["redis"][0]) - int(b["redis"][0])) / hz if "redis" in a else None
    r["redis_sys"] = (int(a["redis"][1]) - int(b["redis"][1])) / hz if len(a.get("redis", [])) > 1 else None
    try:
        with open(base + ".redis.fsync") as f:
            v = [int(x) for x in f.read().split()]
        # Pairs of (unix time, ms); the ramp before the window included.
        r["fsync_slow"] = (len(v) // 2, max(v[1::2]) if len(v) > 1 else 0)
    except (OSError, ValueError):
        pass
    r["subs"] = [s for s in (last_json(f"{base}.sub{i}.json") for i in range(n)) if s]
    r["pubs"] = [p for p in (last_json(f"{base}.pub{i}.json") for i in range(n)) if p]
    rb, ra = redis_stats(base + ".redis.before"), redis_stats(base + ".redis.after")
    if rb and ra and "total_net_input_bytes" in ra[1]:
        # INFO and XLEN are this script's own.
        delta = {k: v - rb[0].get(k, 0) for k, v in ra[0].items() if k not in ("info", "xlen")}
        r["cmds"] = {k: v for k, v in delta.items() if v > 0}
        r["bytes_in"] = int(ra[1]["total_net_input_bytes"]) - int(rb[1]["total_net_input_bytes"])
        r["entries"] = int(ra[1]["xlen"]) - int(rb[1]["xlen"])
    warns = []
    for i in range(n):
        try:
            with open(f"{base}.node{i}.log") as f:
                warns += [f"node{i}: {l.strip()}" for l in f if re.search(r"WARN|ERROR", l)]
        except OSError:
            pass
    r["warns"] = warns
    try:
        with open(base + ".redis-died") as f:
            r["redis_died"] = " / ".join(l.strip() for l in f if l.strip())
    except OSError:
        pass
    try:
        with open(base + ".aof-bytes") as f:
            r["aof"] = int(f.read().strip())
    except (OSError, ValueError):
        pass
    return r

def fmt(v, unit="", nd=None):
    if v is None:
        return "-"
    if isinstance(v, float):
        if nd is not None:
            v = round(v, nd)
        elif v >= 100:
            v = round(v)
        elif v >= 10:
            v = round(v, 1)
        else:
            v = round(v, 2)
    return f"{v:,}{unit}"

def ms(us):
    return None if us is None else us / 1000

def published(r):
    return sum(p.get("published", 0) for p in r["pubs"])

def problems(r):
    bad = []
    keys = ("lost", "lost_in_gaps", "not_arrived_by_deadline", "missed_after_disconnect",
            "duplicates", "reordered", "disconnects", "gaps", "failed", "bad_payloads", "stream_errors")
    for k in keys:
        v = sum(int(s.get(k, 0) or 0) for s in r["subs"])
        if v:
            bad.append(f"{k} {v:,}")
    rf = sum(int((s.get("receipts") or {}).get("failed", 0) or 0) for s in r["subs"])
    if rf:
        bad.append(f"receipts failed {rf:,}")
    pf = sum(int(p.get("failed", 0) or 0) for p in r["pubs"])
    if pf:
        bad.append(f"publishes failed {pf:,}")
    if r["warns"]:
        bad.append(f"{len(r['warns'])} node warnings")
    if r.get("redis_died"):
        bad.append(f"redis-server died: {r['redis_died']}")
    return bad

def worst(r, q):
    v = [s["latency_us"][q] for s in r["subs"] if s.get("latency_us") and s["latency_us"].get(q) is not None]
    return max(v) if v else None

R = {(t, c): load(t, c) for t in topologies for c in cases}
meta = {}
try:
    with open(f"{out}/meta") as f:
        for l in f:
            k, v = l.split(" ", 1)
            meta[k] = v.strip()
except OSError:
    pass

rows = []
def row(label, measure, fn):
    cells = []
    for t in topologies:
        r = R.get((t, label))
        try:
            cells.append(fn(r) if r else "-")
        except (KeyError, TypeError, ZeroDivisionError, IndexError):
            cells.append("-")
    rows.append((measure, cells))

TITLE = {
    "fan1k": "1 ch x 1,000 subs, 1,000 events, full speed",
    "rate1k": "1 ch x 1,000 subs, 500 events at 50/s",
    "rate100": "1 ch x 100 subs, 500 events at 50/s",
    "acks1k": "1,000 devices acking, 300 events, full speed",
    "pub": "no subscribers, a pere-pub per node",
    "pub0": "no subscribers, only node 0 publishes",
    "follow": "1,000 devices acking, 300 events, all on node 0",
}

def per_node_dps(r):
    parts = []
    for i, s in enumerate(r["subs"]):
        c = r["cpu"][i]
        parts.append(fmt(s["deliveries"] / c if c else None))
    return " / ".join(parts)

def total_dps(r):
    d = sum(s["deliveries"] for s in r["subs"])
    c = sum(x for x in r["cpu"] if x)
    return fmt(d / c) + f" ({fmt(c, ' s')})"

def cmds_per(r, per):
    if "cmds" not in r or not per:
        return "-"
    return fmt(sum(r["cmds"].values()) / per, nd=2)

def sent_per(r, per):
    """What the nodes send: appends (EVALSHA) and log reads (XREAD)."""
    if "cmds" not in r or not per:
        return "-"
    sent = sum(r["cmds"].get(k, 0) for k in ("evalsha", "eval", "xread"))
    return fmt(sent / per, nd=2)

def fsync_cell(r):
    if "fsync_slow" not in r:
        return "-"
    n, worst_ms = r["fsync_slow"]
    return f"{n}, {worst_ms:,} ms" if n else "none"

def status(r):
    d = sum(s["deliveries"] for s in r["subs"])
    e = sum(s["expected"] for s in r["subs"])
    bad = problems(r)
    return f"{d:,}/{e:,}" + ("" if not bad else " **" + ", ".join(bad) + "**")

for c in cases:
    t = TITLE.get(c, c)
    if c in ("fan1k", "rate1k", "rate100", "acks1k", "follow"):
        rows.append((f"**{t}**", [""] * len(topologies)))
        row(c, "publishes/s (publish p50 / p99)", lambda r: fmt(r["pubs"][0]["publishes_per_second"]) + f" ({fmt(ms(r['pubs'][0]['latency_us']['p50']), ' ms')} / {fmt(ms(r['pubs'][0]['latency_us']['p99']), ' ms')})")
        row(c, "publish→deliver p50 / p99 (worst node)", lambda r: f"{fmt(ms(worst(r, 'p50')), ' ms')} / {fmt(ms(worst(r, 'p99')), ' ms')}")
        row(c, "deliveries / node CPU-s, all nodes (node CPU)", total_dps)
        row(c, "deliveries / CPU-s, per node", per_node_dps)
        row(c, "Redis CPU (kernel part); machine busy (of 2 cores)", lambda r: f"{fmt(r['redis_cpu'], ' s')} ({fmt(r['redis_sys'], ' s')}); {fmt(r['busy_cores'], nd=2)}")
        row(c, "Redis fsyncs ≥ 20 ms: seconds with one, worst", fsync_cell)
        if c == "follow":
            def fol(r):
                acked = sum(s["receipts"]["acked"] for s in r["subs"])
                return " / ".join(fmt(x / acked * 1e6, " µs") for x in r["cpu"])
            row(c, "node CPU per receipt, each node (node 0 serves all)", fol)
        if c in ("acks1k", "follow"):
            def rc(r):
                acked = sum(s["receipts"]["acked"] for s in r["subs"])
                cpu = sum(x for x in r["cpu"] if x)
                p99 = max(s["receipts"]["all_acked_us"]["p99"] for s in r["subs"])
                return f"{acked:,}; {fmt(acked / r['wall'])}/s; {fmt(acked / cpu)}/node CPU-s; all-acked p99 {fmt(ms(p99), ' ms')}"
            row(c, "receipts: acked; /s wall; /node CPU-s; p99", rc)
            row(c, "Redis commands per receipt (log entries per receipt)", lambda r: cmds_per(r, sum(s['receipts']['acked'] for s in r['subs'])) + f" ({fmt(r['entries'] / sum(s['receipts']['acked'] for s in r['subs']), nd=3)})")
        row(c, "Redis commands per publish (of which EVALSHA + XREAD)", lambda r: f"{cmds_per(r, published(r))} ({sent_per(r, published(r))})")
        row(c, "Redis bytes in per publish; log entries; AOF", lambda r: f"{fmt(r['bytes_in'] / published(r))} B; {r['entries']:,}; {fmt(r['aof'] / 1e6 if 'aof' in r else None, ' MB')}")
        row(c, "delivered / expected", status)
    elif c in ("pub", "pub0"):
        rows.append((f"**{t}**", [""] * len(topologies)))
        row(c, "publishes/s, all publishers", lambda r: fmt(published(r) / max(p["seconds"] for p in r["pubs"])) + (" (" + " + ".join(fmt(p["publishes_per_second"]) for p in r["pubs"]) + ")" if len(r["pubs"]) > 1 else ""))
        row(c, "publish p50 / p99 (worst publisher)", lambda r: f"{fmt(ms(max(p['latency_us']['p50'] for p in r['pubs'])), ' ms')} / {fmt(ms(max(p['latency_us']['p99'] for p in r['pubs'])), ' ms')}")
        row(c, "node CPU per publish, each node", lambda r: " / ".join(fmt(x / published(r) * 1e6, ' µs') for x in r["cpu"]))
        row(c, "Redis CPU per publish, kernel part (1 core ⇒ publishes/s)", lambda r: f"{fmt(r['redis_cpu'] / published(r) * 1e6, ' µs')}, {fmt(r['redis_sys'] / published(r) * 1e6, ' µs')} (⇒ {fmt(published(r) / r['redis_cpu'])}/s)")
        row(c, "Redis fsyncs ≥ 20 ms: seconds with one, worst", fsync_cell)
        row(c, "publishes per log entry", lambda r: fmt(published(r) / r["entries"]))
        row(c, "Redis commands per publish (of which EVALSHA + XREAD)", lambda r: f"{cmds_per(r, published(r))} ({sent_per(r, published(r))})")
        row(c, "machine busy (of 2 cores); failures", lambda r: f"{fmt(r['busy_cores'], nd=2)}; " + (", ".join(problems(r)) or "none"))

print(f"run: {meta.get('start', '?')} → {meta.get('end', '?')} (UTC, load average 1/5/15 min), commit {meta.get('commit', '?')}, redis {meta.get('redis', '')}, synchronous 4 KiB write {meta.get('fsync_start', '?')} ms at the start, {meta.get('fsync_end', '?')} ms at the end")
print("| load / measure | " + " | ".join(HEAD[t] for t in topologies) + " |")
print("|---|" + "---|" * len(topologies))
for m, cells in rows:
    print(f"| {m} | " + " | ".join(cells) + " |")

# Redis commands per publish by command: how they do not grow with subscribers.
cl = [t for t in topologies if t != "embedded"]
rc = [c for c in cases if c in ("rate100", "rate1k", "fan1k", "acks1k", "follow", "pub", "pub0")]
if cl and rc:
    print()
    print("Redis commands per publish, by command (INFO commandstats deltas / publishes):")
    print()
    print("| topology | case | " + " | ".join(["total", "evalsha", "xread", "inside scripts", "other", "log entries per publish"]) + " |")
    print("|---|---|" + "---|" * 6)
    for t in cl:
        for c in rc:
            r = R.get((t, c))
            if not r or "cmds" not in r or not published(r):
                continue
            p = published(r)
            cm = r["cmds"]
            ev = cm.get("evalsha", 0) + cm.get("eval", 0)
            xr = cm.get("xread", 0)
            inside = sum(cm.get(k, 0) for k in ("time", "get", "set", "xadd", "zadd", "pexpire", "zrangebyscore", "zrem", "xtrim", "del", "persist", "hset", "hget", "hmget"))
            other = sum(cm.values()) - ev - xr - inside
            print(f"| {t} | {c} | {fmt(sum(cm.values()) / p, nd=2)} | {fmt(ev / p, nd=2)} | {fmt(xr / p, nd=2)} | {fmt(inside / p, nd=2)} | {fmt(other / p, nd=2)} | {fmt(r['entries'] / p, nd=3)} |")
    print()
    print("commands seen:", ", ".join(sorted({k for t in cl for c in rc if R.get((t, c)) and 'cmds' in R[(t, c)] for k in R[(t, c)]['cmds']})))

# The latency Redis adds: 1 cluster node against 1 embedded node, same load.
if "embedded" in topologies and "c1" in topologies:
    lines = []
    # Only at a paced rate: at full speed p99 is the age of the backlog.
    for c in (c for c in cases if c.startswith("rate")):
        e, k = R.get(("embedded", c)), R.get(("c1", c))
        if not e or not k or not e["subs"] or not k["subs"]:
            continue
        d = lambda q: ms(worst(k, q) - worst(e, q))
        pe, pk = e["pubs"][0]["latency_us"], k["pubs"][0]["latency_us"]
        lines.append(f"| {TITLE.get(c, c)} | {fmt(d('p50'), ' ms')} | {fmt(d('p99'), ' ms')} | {fmt(ms(pk['p50'] - pe['p50']), ' ms')} | {fmt(ms(pk['p99'] - pe['p99']), ' ms')} |")
    if lines:
        print()
        print("The latency Redis adds (1 cluster node minus 1 embedded node, same load):")
        print()
        print("| load | publish→deliver p50 | p99 | publish request p50 | p99 |")
        print("|---|---|---|---|---|")
        print("\n".join(lines))

warn = [(t, c, w) for (t, c), r in R.items() if r for w in r["warns"]]
if warn:
    print()
    print("node warnings and errors (first 20):")
    for t, c, w in warn[:20]:
        print(f"  {t}/{c} {w[:300]}")
EOF
}

HZ="$(getconf CLK_TCK)"
if [ "${TABLE_ONLY:-0}" = 1 ]; then
    table
    exit 0
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -q -p pere-server -p pere-pub -p pere-sub)
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- accounting ------------------------------------------------------------------

cpu_ticks() { # pid -> utime+stime in clock ticks, then stime (-1: the process is gone)
    local f
    [ -r "/proc/$1/stat" ] || { echo -1 -1; return; }
    # Fields after the `(comm)`: state is 3rd, utime 14th, stime 15th.
    f="$(sed 's/^.*) //' "/proc/$1/stat")"
    set -- $f
    echo $((${12} + ${13})) "${13}"
}

machine_ticks() { # -> "busy total" ticks of the whole machine, from /proc/stat
    awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

free_ports() { # n -> n free loopback ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# --- redis and nodes ---------------------------------------------------------------

REDIS_PID=""
REDIS_PORT=""
start_redis() { # dir
    local dir=$1
    mkdir -p "$dir"
    REDIS_PORT="$(free_ports 1)"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" \
        --logfile "$dir/redis.log" --save "" --appendonly yes \
        --appendfsync "$REDIS_FSYNC" --latency-monitor-threshold 20 --daemonize no \
        >/dev/null 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 100); do
        if [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then return 0; fi
        sleep 0.1
    done
    echo "redis-server did not start; see $dir/redis.log" >&2
    exit 1
}
stop_redis() {
    if [ -n "$REDIS_PID" ]; then
        kill -TERM "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=""
    fi
}

NODE_PIDS=()
NODE_PORTS=()
start_nodes() { # topology case
    local topo=$1 name=$2 n i
    n="$(nodes_of "$topo")"
    # shellcheck disable=SC2207
    NODE_PORTS=($(free_ports "$n"))
    NODE_PIDS=()
    for i in $(seq 0 $((n - 1))); do
        local store=(--memory)
        if [ "$topo" != embedded ]; then
            store=(--cluster "redis://127.0.0.1:$REDIS_PORT" --node-id "bench-$i")
        fi
        "$BIN/pere-server" "${store[@]}" --host 127.0.0.1 --port "${NODE_PORTS[$i]}" -q \
            >"$OUT/$topo.$name.node$i.log" 2>&1 &
        NODE_PIDS+=("$!")
    done
    for i in $(seq 0 $((n - 1))); do
        local ok=0
        for _ in $(seq 1 150); do
            if curl -sf -o /dev/null "http://127.0.0.1:${NODE_PORTS[$i]}/healthz"; then ok=1; break; fi
            sleep 0.1
        done
        if [ "$ok" != 1 ]; then
            echo "node $i of $topo did not start; see $OUT/$topo.$name.node$i.log" >&2
            exit 1
        fi
    done
}
stop_nodes() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${NODE_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    NODE_PIDS=()
}

# Load tools still running when the script is interrupted.
TOOL_PIDS=()
cleanup() {
    local pid
    for pid in "${TOOL_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    stop_nodes
    stop_redis
}
trap cleanup EXIT

nodes_of() { case "$1" in embedded | c1) echo 1 ;; c2) echo 2 ;; c3) echo 3 ;; *) echo "unknown topology $1" >&2; exit 2 ;; esac; }

redis_snapshot() { # file
    if [ -n "$REDIS_PID" ]; then
        { redis-cli -p "$REDIS_PORT" INFO commandstats; redis-cli -p "$REDIS_PORT" INFO stats
          echo "xlen:$(redis-cli -p "$REDIS_PORT" XLEN pere:log)"; } >"$1" 2>&1 || true
    fi
}

# A Redis that died during a case (a full disk makes `appendfsync always`
# exit) is said on stderr and in the table, with the end of its log.
redis_check() { # dir base
    if [ -n "$REDIS_PID" ] && ! kill -0 "$REDIS_PID" 2>/dev/null; then
        tail -3 "$1/redis.log" >"$2.redis-died"
        echo "redis-server died during $2; the end of its log:" >&2
        cat "$2.redis-died" >&2
    fi
    if [ -d "$1" ]; then
        du -sb "$1" | cut -f1 >"$2.aof-bytes"
        [ "${KEEP_AOF:-0}" = 1 ] || find "$1" -name 'appendonly*' -exec rm -rf {} +
    fi
}

fsync_ms() { # -> ms per 4 KiB synchronous write in OUT
    local f="$OUT/fsync-probe" t0 t1
    t0="$(date +%s%N)"
    dd if=/dev/zero of="$f" bs=4k count=200 oflag=dsync 2>/dev/null
    t1="$(date +%s%N)"
    rm -f "$f"
    python3 -c "print(round(($t1 - $t0) / 200 / 1e6, 3))"
}

snapshot() { # file: wall time, machine ticks, each node's and redis's ticks
    local i
    {
        echo "wall $(date +%s.%N)"
        echo "machine $(machine_ticks)"
        for i in "${!NODE_PIDS[@]}"; do echo "node$i $(cpu_ticks "${NODE_PIDS[$i]}")"; done
        if [ -n "$REDIS_PID" ]; then echo "redis $(cpu_ticks "$REDIS_PID")"; fi
    } >"$1"
}

# Redis's own record of slow fsyncs (latency monitor, >= 20 ms): one sample
# per second at most, each the worst of its second.
redis_latency() { # file
    if [ -n "$REDIS_PID" ]; then
        redis-cli -p "$REDIS_PORT" LATENCY HISTORY aof-fsync-always >"$1" 2>&1 || true
    fi
}

# --- one case ----------------------------------------------------------------------

# run_case TOPOLOGY NAME DEVICES EVENTS RATE ACK PUBLISH SPREAD
# PUBLISH: node0 (one pere-pub on node 0, the subscribers' channel), all (one
# per node, each its own channel), or first (one, on node 0, own channel).
# SPREAD: all (devices spread evenly over the nodes) or node0.
run_case() {
    local topo=$1 name=$2 devices=$3 events=$4 rate=$5 ack=$6 publish=$7 spread=$8
    local n i base p channel="$RUN_ID$name" rate_args=() ack_args=()
    n="$(nodes_of "$topo")"
    base="$OUT/$topo.$name"
    [ "$rate" != "-" ] && rate_args=(--rate "$rate")
    [ "$ack" = 1 ] && ack_args=(--ack)
    if [ "$topo" != embedded ]; then start_redis "$OUT/redis.$topo.$name"; fi
    start_nodes "$topo" "$name"
    log "$name on $topo ($n node(s)): $devices devices, $events events ${rate_args[*]} ${ack_args[*]} publish=$publish spread=$spread"
    local subs=() serving=$n
    [ "$spread" = node0 ] && serving=1
    if [ "$devices" -gt 0 ]; then
        for i in $(seq 0 $((serving - 1))); do
            local d=$((devices / serving + (i < devices % serving ? 1 : 0)))
            "$BIN/pere-sub" "127.0.0.1:${NODE_PORTS[$i]}" "$channel" --devices "$d" \
                --count "$events" --duration "$SUB_DURATION" "${ack_args[@]}" \
                >"$base.sub$i.json" 2>"$base.sub$i.err" &
            subs+=("$!")
            TOOL_PIDS+=("$!")
        done
        # Every stream open before the first publish (or loss is by design).
        for i in $(seq 0 $((serving - 1))); do
            local ready=0
            for _ in $(seq 1 600); do
                if grep -q "devices ready (" "$base.sub$i.err" 2>/dev/null; then ready=1; break; fi
                sleep 0.2
            done
            [ "$ready" = 1 ] || echo "$topo/$name: devices on node $i never got ready; see $base.sub$i.err" >&2
        done
        sleep 0.5
    fi
    redis_snapshot "$base.redis.before"
    snapshot "$base.before"
    local pubs=()
    case "$publish" in
        node0)
            "$BIN/pere-pub" "127.0.0.1:${NODE_PORTS[0]}" "$channel" --count "$events" \
                --concurrency "$PUBLISHERS" --size "$SIZE" --duration "$SUB_DURATION" \
                "${rate_args[@]}" -q >"$base.pub0.json" 2>"$base.pub0.err" &
            pubs+=("$!") ;;
        all | first)
            local last=$((n - 1))
            [ "$publish" = first ] && last=0
            for i in $(seq 0 "$last"); do
                "$BIN/pere-pub" "127.0.0.1:${NODE_PORTS[$i]}" "$channel.n$i" --count 100000000 \
                    --concurrency "$PUB_CONCURRENCY" --size "$SIZE" --duration "${PUB_SECONDS}s" \
                    -q >"$base.pub$i.json" 2>"$base.pub$i.err" &
                pubs+=("$!")
            done ;;
    esac
    TOOL_PIDS+=("${pubs[@]}")
    for p in "${pubs[@]}"; do wait "$p" || true; done
    for p in "${subs[@]}"; do wait "$p" || true; done
    snapshot "$base.after"
    redis_snapshot "$base.redis.after"
    redis_latency "$base.redis.fsync"
    TOOL_PIDS=()
    stop_nodes
    if [ "$topo" != embedded ]; then redis_check "$OUT/redis.$topo.$name" "$base"; fi
    stop_redis
}

# name devices events rate ack publish spread
declare -A CASE=(
    [fan1k]="1000 1000 - 0 node0 all"
    [rate1k]="1000 500 50 0 node0 all"
    [rate100]="100 500 50 0 node0 all"
    [acks1k]="1000 300 - 1 node0 all"
    [follow]="1000 300 - 1 node0 node0"
    [pub]="0 0 - 0 all all"
    [pub0]="0 0 - 0 first all"
)

log "output in $OUT; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
{
    echo "start $(date -u +%Y-%m-%dT%H:%M:%SZ) $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "redis $(redis-server --version | grep -o 'v=[0-9.]*')"
    echo "fsync_start $(fsync_ms)"
} >"$OUT/meta"

for topo in $TOPOLOGIES; do
    for name in $CASES; do
        [ -n "${CASE[$name]:-}" ] || { echo "unknown case $name" >&2; exit 2; }
        read -r devices events rate ack publish spread <<<"${CASE[$name]}"
        # Only node 0 serving differs from the other cases with several nodes only.
        if { [ "$publish" = first ] || [ "$spread" = node0 ]; } && [ "$(nodes_of "$topo")" -lt 2 ]; then continue; fi
        run_case "$topo" "$name" "$devices" "$events" "$rate" "$ack" "$publish" "$spread"
        sleep 1
    done
done
{
    echo "end $(date -u +%Y-%m-%dT%H:%M:%SZ) $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "fsync_end $(fsync_ms)"
} >>"$OUT/meta"

table
