#!/usr/bin/env bash
# The GPU check in one device call: the engine benchmark (exports + numerics + timings), then the real
# service on the GPU and the latency-by-depth sweep against it with Locust on the machine's cores.
# Writes at most 8 files to $OUT and prints a short table last. A stage that fails or runs out of
# time is recorded and the next one still runs; $OUT always gets check.log.
#
# On a machine with an NVIDIA GPU, onnxruntime-gpu, BentoML and Locust, the Fashion-MNIST test split
# in $FMNIST_DIR (or .device/fmnist-test):
#     OUT=/tmp/gpu-check bash bench/gpu/check.sh
# (A machine without a package registry gets those from bench/gpu/prepare.sh's .device/ folder:
#     source .device/setup.sh && bash bench/gpu/check.sh)
# Here, as a CPU rehearsal (every figure a CPU figure, said so in every report):
#     DRY_RUN=1 OUT=/tmp/gpu-check-dry bash bench/gpu/check.sh
#
# Environment (defaults for the GPU; DRY_RUN=1 shrinks them):
#   DEADLINE_S=480      the whole script, seconds (the device call also pays ~30-60 s for setup.sh)
#   STAGES=engine,serve,sweep   which stages run (a rerun on a warm machine can take fewer)
#   MODELS=resnet18,resnet34,resnet50,resnet101,resnet152
#   ENGINE_S=170        the engine benchmark's budget, exports included (it shares it out by model)
#   API_WORKERS=8 LOCUST_WORKERS=6 SERVE_MAX_BATCH=64   16 cores: service entry workers, Locust workers
#   SWEEP_USERS=1,8,32  SWEEP_DURATION=<what the time left allows, 3-30 s per model and load>
#   SERVE_ENV="RESNET_CUDA_GRAPHS=on ..."   extra service settings (service/config.py)
#   WORK=/tmp/gpu-check scratch (kept: a rerun on the same machine reuses the exports)
set -u
: "${OUT:?set OUT to the folder that comes back}"
cd "$(dirname "$0")/../.." || exit 1
START=$(date +%s)
DRY_RUN=${DRY_RUN:-0}
if [ "$DRY_RUN" = 1 ]; then
  : "${PYTHON:=$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
  : "${DEADLINE_S:=900}" "${MODELS:=resnet18}" "${ENGINE_S:=300}" "${API_WORKERS:=1}" "${LOCUST_WORKERS:=0}"
  : "${SERVE_MAX_BATCH:=4}" "${SWEEP_USERS:=1,2}" "${SWEEP_DURATION:=3}" "${WORK:=/tmp/gpu-check-dry}"
  DEVICE=cpu
else
  : "${PYTHON:=python3}" "${DEADLINE_S:=480}" "${MODELS:=resnet18,resnet34,resnet50,resnet101,resnet152}"
  : "${ENGINE_S:=170}" "${API_WORKERS:=8}" "${LOCUST_WORKERS:=6}" "${SERVE_MAX_BATCH:=64}" "${SWEEP_USERS:=1,8,32}"
  : "${WORK:=/tmp/gpu-check}"
  DEVICE=cuda
fi
: "${STAGES:=engine,serve,sweep}" "${SERVE_ENV:=}" "${SWEEP_DURATION:=}"
RESERVE_S=25  # kept for stopping the service and collecting the files
PY=$PYTHON
mkdir -p "$OUT" "$WORK"
export BENTOML_HOME=$WORK/bentoml PYTHONUNBUFFERED=1
if [ -z "${FMNIST_DIR:-}" ] && [ -d .device/fmnist-test ]; then export FMNIST_DIR=$PWD/.device/fmnist-test; fi
exec 3>&1 4>&2
exec > >(tee -a "$OUT/check.log") 2>&1
TEE_PID=$!
STAGES_TSV=$WORK/stages.tsv
: > "$STAGES_TSV"
SERVE_PID=
PORT=

time_left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }
wants() { [[ ",$STAGES," == *",$1,"* ]]; }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$STAGES_TSV"; echo "== $1: $2 (${3}s)"; }

# stage NAME BUDGET_S CMD...: runs CMD under `timeout` (BUDGET_S, less if the deadline is nearer)
stage() {
  local name=$1 budget=$2 left rc t0 status
  shift 2
  left=$(( $(time_left) - RESERVE_S ))
  (( budget > left )) && budget=$left
  if (( budget < 10 )); then record "$name" "skipped: out of time" 0; return 1; fi
  echo "== $name (at most ${budget}s): $*"
  t0=$(date +%s)
  timeout -k 10 "$budget" "$@"
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${budget}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  record "$name" "$status" $(( $(date +%s) - t0 ))
  return $rc
}

stop_service() {  # the group setsid made (pid = group id), or the process alone without setsid
  [ -n "$SERVE_PID" ] || return 0
  kill -TERM -- "-$SERVE_PID" 2>/dev/null || kill -TERM "$SERVE_PID" 2>/dev/null
  for _ in $(seq 20); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$SERVE_PID" 2>/dev/null || kill -KILL "$SERVE_PID" 2>/dev/null
  wait "$SERVE_PID" 2>/dev/null
  SERVE_PID=
}
trap 'stop_service; exit 143' TERM INT

# ---- what this machine is --------------------------------------------------------------------
echo "== gpu check: DRY_RUN=$DRY_RUN device=$DEVICE models=$MODELS stages=$STAGES deadline=${DEADLINE_S}s work=$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
"$PY" -c "import sys, onnxruntime as o, torch; print('python', sys.version.split()[0], '| onnxruntime', o.__version__,
o.get_available_providers(), '| torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | grep -v Warning

# ---- 1. engine: exports (registered for the service), numerics, timings, OnnxEngine, profile --------
if wants engine; then
  args=(--out "$WORK/engine" --onnx-dir "$WORK/onnx" --register --models "$MODELS" --deadline-s "$ENGINE_S")
  [ "$DRY_RUN" = 1 ] && args+=(--dry-run)
  if ! stage engine $(( ENGINE_S + 30 )) "$PY" -m bench.gpu.engine_bench "${args[@]}" \
      && [ -s "$WORK/engine/results.json" ]; then
    "$PY" -m bench.gpu.engine_bench --report-only --out "$WORK/engine" || true
  fi
fi

# ---- 2. the real service on this machine's device -------------------------------------------------
served=
for m in ${MODELS//,/ }; do
  [ -f "$WORK/onnx/$m-imagenet.fp32.onnx" ] && served+="${served:+,}$m-imagenet"
done
if wants serve && [ -z "$served" ]; then
  record serve "skipped: no exported model in $WORK/onnx" 0
elif wants serve; then
  PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  echo "== serve: $served on 127.0.0.1:$PORT (RESNET_DEVICE=$DEVICE, $API_WORKERS entry workers) $SERVE_ENV"
  # setsid: the service and its workers form one process group, stopped as one at the end
  group=$(command -v setsid || true)
  env RESNET_MODELS="$served" RESNET_DEVICE=$DEVICE RESNET_API_WORKERS="$API_WORKERS" \
      RESNET_MAX_BATCH_SIZE="$SERVE_MAX_BATCH" RESNET_MAX_LATENCY_MS=60000 $SERVE_ENV \
      $group "$PY" -m bentoml serve service.service:Classifier --host 127.0.0.1 --port "$PORT" \
      > "$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  stage serve 180 "$PY" - "$PORT" "$SERVE_PID" "$WORK/models.json" <<'EOF'
import json, os, sys, time, urllib.request
port, pid, models_json = sys.argv[1], int(sys.argv[2]), sys.argv[3]
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("bentoml serve exited before it was ready (see serve.log)")
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200:
            break
    except OSError:
        pass
    time.sleep(1)
body = urllib.request.urlopen(f"http://127.0.0.1:{port}/models", timeout=30).read()
open(models_json, "wb").write(body)
for m in json.loads(body)["models"]:
    print(f"   {m.get('name')}: {m.get('precision')} on {m.get('provider')}")
EOF
  tail -n 5 "$WORK/serve.log" | sed 's/^/   serve.log: /'
fi

# ---- 3. the latency-by-depth sweep against it ------------------------------------------------------
if wants sweep; then
  if [ -z "$SERVE_PID" ] || ! kill -0 "$SERVE_PID" 2>/dev/null; then
    record sweep "skipped: no running service" 0
  elif ! "$PY" -c "import loadtests.sweep" 2>/dev/null; then
    record sweep "skipped: loadtests.sweep does not import" 0
  else
    n_models=$(tr ',' '\n' <<< "$MODELS" | grep -c .)
    n_runs=$(( n_models * $(tr ',' '\n' <<< "$SWEEP_USERS" | grep -c .) ))
    # Guessed, not measured on the GPU: the sweep's own engine-only timings (~15 s per model) and
    # ~6 s per Locust run for its warm-up, start and stop (on this CPU, 5 s and 2 s). The sweep writes
    # its results.json only at its end (the summary then falls back to the Locust CSVs of the runs that
    # finished), so the duration leaves room for all of that, and 15% more, inside the time left.
    budget=$(( $(time_left) - RESERVE_S ))
    duration=${SWEEP_DURATION:-$(( (budget * 85 / 100 - 15 * n_models - 6 * n_runs) / n_runs ))}
    (( duration > 30 )) && duration=30
    (( duration < 3 )) && duration=3
    # the service's batch limit and extra settings also for the sweep's in-process engine-only timings
    stage sweep "$budget" env RESNET_MAX_BATCH_SIZE="$SERVE_MAX_BATCH" $SERVE_ENV \
      "$PY" -m loadtests.sweep --models "$MODELS" --users "$SWEEP_USERS" \
      --duration "${duration}s" --warmup 1s --host "http://127.0.0.1:$PORT" --workers "$LOCUST_WORKERS" \
      --precision auto --out "$WORK/sweep"
  fi
fi
stop_service

# ---- 4. at most 8 files to $OUT ----------------------------------------------------------------------
for f in results.json report.md engine_bench.png; do
  [ -f "$WORK/engine/$f" ] && cp "$WORK/engine/$f" "$OUT/engine_${f/engine_/}"
done
sweep_dir=$(ls -1dt "$WORK"/sweep/*/ 2>/dev/null | head -n 1)
if [ -n "$sweep_dir" ]; then
  [ -f "$sweep_dir/report.md" ] && cp "$sweep_dir/report.md" "$OUT/sweep_report.md"
  tar -czf "$OUT/sweep.tar.gz" -C "$sweep_dir" .
fi
logs=(stages.tsv)
for f in serve.log models.json; do [ -f "$WORK/$f" ] && logs+=("$f"); done
for f in "$WORK"/onnx/*.json; do [ -f "$f" ] && logs+=("onnx/$(basename "$f")"); done
tar -czf "$OUT/logs.tar.gz" -C "$WORK" "${logs[@]}"
dry=(); [ "$DRY_RUN" = 1 ] && dry=(--dry-run)
"$PY" -m bench.gpu.summary --stages "$STAGES_TSV" --engine "$WORK/engine/results.json" \
  --sweep "${sweep_dir:-/nonexistent}/results.json" --sweep-raw "${sweep_dir:-/nonexistent}/raw" \
  ${dry[@]+"${dry[@]}"} > "$OUT/summary.md" 2>&1
n=$(ls -1 "$OUT" | wc -l)
if (( n > 8 )); then  # never expected; the device returns at most 8 files
  extra=$(ls -1 "$OUT" | grep -vE '^(check.log|summary.md|engine_report.md|engine_results.json|engine_bench.png|sweep_report.md|logs.tar.gz)$')
  (cd "$OUT" && tar -czf extra.tar.gz $extra && rm -f $extra)
fi
for f in "$OUT"/*; do
  (( $(stat -c %s "$f") > 16 * 1024 * 1024 )) && echo "WARNING: $(basename "$f") is over 16 MiB and will not come back"
done
echo "== done in $(( $(date +%s) - START ))s; $OUT:"
ls -la "$OUT" | tail -n +2
echo
cat "$OUT/summary.md"
exec 1>&3 2>&4
wait "$TEE_PID" 2>/dev/null
exit 0
