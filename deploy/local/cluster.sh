#!/usr/bin/env bash
# A Dask cluster on this machine for daskmeta: one `dask scheduler` and N `dask worker`
# processes, in the foreground until interrupted (Ctrl-C or SIGTERM stops them all).
#
#   deploy/local/cluster.sh [--workers N] [--threads T] [--memory-limit 4GiB]
#                           [--host 127.0.0.1] [--port 8786] [--dir DIR] [--nanny]
#                           [--grace SECONDS]
#
# Writes DIR/scheduler.json (the scheduler file: `daskmeta ... --scheduler $(jq -r .address
# DIR/scheduler.json)`, or distributed.Client(scheduler_file=...)), DIR/scheduler.pid,
# DIR/worker-K.pid and DIR/*.log (DIR: ./daskmeta-cluster). Prints the scheduler's address on
# stdout once it is up; a worker that dies is not restarted (the others carry on). Workers run
# without a nanny unless --nanny. DASK_* and DASK_DASKMETA__* variables reach every process.
# On SIGTERM or Ctrl-C every process gets SIGTERM, and SIGKILL if still running --grace
# seconds (default 10) later.
# `dask` is taken from $DASK (default: the `dask` next to $PYTHON, else on PATH).
set -euo pipefail

workers=2 threads=1 memory=auto host=127.0.0.1 port=8786 dir=./daskmeta-cluster nanny=--no-nanny
grace=10
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "cluster.sh: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) need "$@"; workers=$2; shift 2 ;;
    --threads) need "$@"; threads=$2; shift 2 ;;
    --memory-limit) need "$@"; memory=$2; shift 2 ;;
    --host) need "$@"; host=$2; shift 2 ;;
    --port) need "$@"; port=$2; shift 2 ;;
    --dir) need "$@"; dir=$2; shift 2 ;;
    --nanny) nanny=--nanny; shift ;;
    --grace) need "$@"; grace=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "cluster.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$workers" "$threads" "$port" "$grace"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "cluster.sh: $n is not a whole number" >&2; exit 2; }
done
(( workers >= 1 )) || { echo "cluster.sh: --workers must be at least 1" >&2; exit 2; }

if [[ -n "${DASK:-}" ]]; then dask_cli=$DASK
elif [[ -n "${PYTHON:-}" && -x "$(dirname "$PYTHON")/dask" ]]; then dask_cli=$(dirname "$PYTHON")/dask
else dask_cli=$(command -v dask) || { echo "cluster.sh: no 'dask' command (pip install distributed)" >&2; exit 2; }
fi

mkdir -p "$dir"
sched_file=$dir/scheduler.json
rm -f "$sched_file" "$dir"/*.pid
pids=()
alive() { for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
stop() {
  trap - TERM INT EXIT
  # Workers first, then the scheduler; each by its own process id. A process still running
  # --grace s after SIGTERM (a worker stuck closing) gets SIGKILL: nothing outlives the script.
  for (( i=${#pids[@]}-1; i>=0; i-- )); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  for _ in $(seq $(( grace * 10 ))); do alive "${pids[@]}" || break; sleep 0.1; done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -f "$dir"/*.pid
}
trap 'stop; exit 0' TERM INT
trap stop EXIT

"$dask_cli" scheduler --host "$host" --port "$port" --no-dashboard \
  --scheduler-file "$sched_file" >"$dir/scheduler.log" 2>&1 &
pids+=($!); echo $! >"$dir/scheduler.pid"
for _ in $(seq 600); do
  [[ -s "$sched_file" ]] && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "cluster.sh: the scheduler exited:" >&2; cat "$dir/scheduler.log" >&2; exit 1; }
  sleep 0.1
done
[[ -s "$sched_file" ]] || { echo "cluster.sh: the scheduler did not start in 60 s" >&2; exit 1; }

for (( k=0; k<workers; k++ )); do
  "$dask_cli" worker --scheduler-file "$sched_file" --nworkers 1 --nthreads "$threads" \
    "$nanny" --no-dashboard --host "$host" --memory-limit "$memory" --death-timeout 60 \
    >"$dir/worker-$k.log" 2>&1 &
  pids+=($!); echo $! >"$dir/worker-$k.pid"
done
python_json='import json,sys; print(json.load(open(sys.argv[1]))["address"])'
"${PYTHON:-python3}" -c "$python_json" "$sched_file"

# Wait until the scheduler ends (workers may die on their own; the cluster goes on).
while kill -0 "${pids[0]}" 2>/dev/null; do wait "${pids[0]}" 2>/dev/null || true; done
