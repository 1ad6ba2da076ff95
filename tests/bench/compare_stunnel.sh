#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup is a trap handler
# ferry vs Debian's stunnel4, side by side on this machine, same EC P-256 certificate, same
# plaintext backend:
#   (a) a 1 GiB download through the proxy:  curl -o /dev/null -w '%{speed_download}', TLS 1.3
#   (b) new TLS 1.3 handshakes per second:    openssl s_time -new -time T
# Each proxy runs with one worker pinned to CPU 0 (taskset -c 0); curl / s_time and the backend
# run on CPU 1. Repetitions are interleaved; the table shows medians. Whole run: ~2 minutes.
#
#   tests/bench/compare_stunnel.sh [--ferry PATH] [--stunnel-only] [--reps N] [--time S]
#                                  [--out FILE | --no-write]
# Default: --ferry build/ferry --reps 3 --time 10 --out docs/benchmarks.md
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/tests/bench"
util="$here/bench_util.py"

ferry="$root/build/ferry"
use_ferry=1
reps=3
stime=10
out="$root/docs/benchmarks.md"
size=$((1024 * 1024 * 1024))
suite=TLS_AES_128_GCM_SHA256 # the same TLS 1.3 suite for both, chosen by the client

while [[ $# -gt 0 ]]; do
  case "$1" in
    --ferry) ferry=$2; shift 2 ;;
    --stunnel-only) use_ferry=0; shift ;;
    --reps) reps=$2; shift 2 ;;
    --time) stime=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --no-write) out=""; shift ;;
    -h | --help) sed -n '3,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_stunnel: unknown argument $1" >&2; exit 2 ;;
  esac
done

for tool in stunnel4 openssl curl python3 taskset; do
  command -v "$tool" >/dev/null || { echo "compare_stunnel: $tool missing (run .ci/install-deps)" >&2; exit 1; }
done
if [[ $use_ferry -eq 1 && ! -x $ferry ]]; then
  echo "compare_stunnel: $ferry not found (build it with .ci/build, or pass --stunnel-only)" >&2
  exit 1
fi
if [[ $(nproc) -lt 2 ]]; then
  echo "compare_stunnel: needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

wait_port() { # wait_port PORT PID NAME
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then
      echo "compare_stunnel: $3 exited; its log:" >&2
      cat "$work/$3.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  echo "compare_stunnel: $3 did not listen on $1 within 10s" >&2
  exit 1
}

# --- set-up ----------------------------------------------------------------------------------
log "work dir $work"
load_start=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load_start" 'BEGIN{exit !(l > 0.5)}'; then
  log "WARNING: load average $load_start: other work on this machine will skew the numbers"
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 30 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 600 "$work/key.pem" # openssl writes new keys 0600 already; ferry refuses world-readable keys
truncate -s "$size" "$work/payload" # sparse: reads as zeros without touching the disk

read -r backend_port ferry_port stunnel_port <<<"$(python3 "$util" free-ports 3)"

taskset -c 1 python3 "$util" backend "$backend_port" "$work/payload" >"$work/backend.log" 2>&1 &
pids+=("$!")
wait_port "$backend_port" "$!" backend
# Warm-up, untimed: the first read of the sparse payload fills the page cache.
taskset -c 1 curl -sS --max-time 60 -o /dev/null "http://127.0.0.1:$backend_port/"

cat >"$work/stunnel.conf" <<CONF
foreground = yes
pid =
debug = warning
[bench]
accept = 127.0.0.1:$stunnel_port
connect = 127.0.0.1:$backend_port
cert = $work/cert.pem
key = $work/key.pem
sslVersionMin = TLSv1.2
libwrap = no
CONF
taskset -c 0 stunnel4 "$work/stunnel.conf" >"$work/stunnel.log" 2>&1 &
stunnel_pid=$!
pids+=("$stunnel_pid")
wait_port "$stunnel_port" "$stunnel_pid" stunnel

proxies=(stunnel)
declare -A port=([stunnel]=$stunnel_port) pid=([stunnel]=$stunnel_pid)
if [[ $use_ferry -eq 1 ]]; then
  cat >"$work/ferry.toml" <<CONF
[global]
workers = 1
log_level = "warn"

[[service]]
name = "bench"
accept = "127.0.0.1:$ferry_port"
connect = "127.0.0.1:$backend_port"
cert = "$work/cert.pem"
key = "$work/key.pem"
CONF
  taskset -c 0 "$ferry" --config "$work/ferry.toml" >"$work/ferry.log" 2>&1 &
  ferry_pid=$!
  pids+=("$ferry_pid")
  wait_port "$ferry_port" "$ferry_pid" ferry
  proxies=(ferry stunnel)
  port[ferry]=$ferry_port
  pid[ferry]=$ferry_pid
fi

# Sanity: the negotiated protocol and a small transfer through each proxy.
declare -A negotiated
for p in "${proxies[@]}"; do
  negotiated[$p]=$(timeout 10 openssl s_client -connect "127.0.0.1:${port[$p]}" -servername localhost \
    -tls1_3 -ciphersuites "$suite" </dev/null 2>/dev/null |
    sed -n 's/^New, \(TLSv1.3\), Cipher is \(.*\)$/\1 \2/p; s/^Server Temp Key: \([^,]*\).*/\1/p' |
    paste -sd' ')
  got=$(taskset -c 1 curl -sS --max-time 10 --tlsv1.3 --tls13-ciphers "$suite" --cacert "$work/cert.pem" \
    -o /dev/null -w '%{http_code} %{size_download}' "https://localhost:${port[$p]}/bytes/100000")
  if [[ $got != "200 100000" ]]; then
    echo "compare_stunnel: sanity transfer through $p failed: $got" >&2
    exit 1
  fi
  log "$p: ${negotiated[$p]}, sanity transfer OK"
done

# --- measurements ----------------------------------------------------------------------------
results="$work/results"
: >"$results"
cpu_of() { python3 "$util" cpu "$1"; }
now() { date +%s.%N; }

download() { # download PROXY REP
  local p=$1 c0 c1 t0 t1 res
  c0=$(cpu_of "${pid[$p]}"); t0=$(now)
  res=$(taskset -c 1 curl -sS --max-time 120 --tlsv1.3 --tls13-ciphers "$suite" \
    --cacert "$work/cert.pem" -o /dev/null -w '%{http_code} %{size_download} %{speed_download}' \
    "https://localhost:${port[$p]}/")
  t1=$(now); c1=$(cpu_of "${pid[$p]}")
  read -r code bytes speed <<<"$res"
  if [[ $code != 200 || $bytes != "$size" ]]; then
    echo "compare_stunnel: download through $p: HTTP $code, $bytes bytes (want $size)" >&2
    exit 1
  fi
  log "$p download #$2: $(awk -v s="$speed" 'BEGIN{printf "%.0f MB/s", s/1e6}')"
  echo "$p download $2 $speed $(awk -v a="$c0" -v b="$c1" 'BEGIN{print b-a}') $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" >>"$results"
}

handshakes() { # handshakes PROXY REP
  local p=$1 c0 c1 t0 t1 outp n rate
  c0=$(cpu_of "${pid[$p]}"); t0=$(now)
  outp=$(timeout $((stime + 20)) taskset -c 1 openssl s_time -connect "127.0.0.1:${port[$p]}" \
    -new -time "$stime" -tls1_3 -ciphersuites "$suite" 2>&1) || true
  t1=$(now); c1=$(cpu_of "${pid[$p]}")
  n=$(sed -n 's/^\([0-9]*\) connections in [0-9]* real seconds.*/\1/p' <<<"$outp" | head -n1)
  if [[ -z $n || $n -eq 0 ]]; then
    echo "compare_stunnel: s_time through $p failed:" >&2
    echo "$outp" >&2
    exit 1
  fi
  rate=$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", n/(b-a)}')
  log "$p handshakes #$2: $n in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s = $rate/s"
  echo "$p handshake $2 $rate $(awk -v a="$c0" -v b="$c1" 'BEGIN{print b-a}') $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" >>"$results"
}

for rep in $(seq "$reps"); do
  order=("${proxies[@]}")
  if ((rep % 2 == 0)) && [[ ${#proxies[@]} -eq 2 ]]; then order=("${proxies[1]}" "${proxies[0]}"); fi
  for p in "${order[@]}"; do download "$p" "$rep"; done
  for p in "${order[@]}"; do handshakes "$p" "$rep"; done
done

# --- report ----------------------------------------------------------------------------------
for p in "${proxies[@]}"; do
  if ! kill -0 "${pid[$p]}" 2>/dev/null; then
    echo "compare_stunnel: $p died during the run; its log:" >&2
    tail -n 20 "$work/$p.log" >&2
    exit 1
  fi
done
table=$(python3 "$util" report "$results")
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
ferry_version="(not run)"
if [[ $use_ferry -eq 1 ]]; then ferry_version=$("$ferry" --version 2>&1 | head -n1); fi
stunnel_version=$(stunnel4 -version 2>&1 | sed -n 's/^\(stunnel [0-9.]*\) .*/\1/p' | head -n1)

report=$(cat <<MD
## ferry vs stunnel4 — $(date -u +%Y-%m-%d)

Measured by \`tests/bench/compare_stunnel.sh\` ($reps interleaved runs, medians).

- Machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, Linux $(uname -r). Load average
  $load_start before the run (other work on the machine), $(cut -d' ' -f1 /proc/loadavg) at its end (the run's own load included).
- Versions: ${ferry_version}; ${stunnel_version} (Debian stunnel4); $(openssl version); $(curl --version | head -n1 | cut -d' ' -f1-2)
- Negotiated: ferry: ${negotiated[ferry]:-not run}; stunnel4: ${negotiated[stunnel]}
- Setup: one EC P-256 self-signed certificate for both; plaintext backend \`bench_util.py backend\`
  (Python asyncio + sendfile of a 1 GiB sparse file). Each proxy on CPU 0 (\`taskset -c 0\`), ferry
  with \`workers = 1\` (stunnel4 has a thread per connection, all on CPU 0); curl, s_time and the
  backend on CPU 1. Per-connection logging off for both (ferry \`log_level = "warn"\`, stunnel
  \`debug = warning\`) and stunnel's \`libwrap = no\`, so that the proxies are compared, not their
  loggers or access control. (At their default levels, ferry \`info\` with one access line per
  connection and stunnel \`notice\` with several, a side check here saw stunnel's handshake rate
  fall about 5x and ferry's by a few percent.)
- Download: \`curl --tlsv1.3 --tls13-ciphers $suite -o /dev/null -w '%{speed_download}'\`,
  MB = 10^6 bytes. Handshakes: \`openssl s_time -new -tls1_3 -ciphersuites $suite -time $stime\`,
  connections divided by wall time; each connection also makes the proxy connect to the backend.
- Proxy CPU % = the proxy's user+system CPU time over the test's wall time (100 = one core busy);
  when it is well under 100, the proxy was not what set the pace. Proxy CPU per unit = that CPU
  time per GiB downloaded or per handshake: the cost of the work, whatever the pace.

$table
MD
)

echo
echo "$report"
if [[ -n $out ]]; then
  {
    echo "# Benchmarks"
    echo
    echo "Re-run with \`tests/bench/compare_stunnel.sh\` (needs \`.ci/install-deps\` and \`.ci/build release\`)."
    echo
    echo "$report"
  } >"$out"
  log "wrote $out"
fi
