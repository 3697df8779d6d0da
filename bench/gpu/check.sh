#!/usr/bin/env bash
# The GPU check of issue 17 in one device call:
#   engine    exports, numerics and timings: resnet18..152 at 224x224 and the Fashion-MNIST family at
#             28x28, onnxruntime CUDA fp16/fp32 (IO binding, NHWC, CUDA graphs, max workspace off)
#             against PyTorch eager; the service's OnnxEngine; a profile of resnet50
#   serve     the real service on the GPU (RESNET_DEVICE=cuda) serving those models
#   classify  /classify with 224x224 JPEGs under Locust: closed loop at rising users, then open loop at
#             70% of the best rate; the CPU the service and the load generator used
#   batch     /classify_batch with 16 images per request, closed loop from an asyncio client; the same
#   sweep     the latency-by-depth sweep (loadtests.sweep) over resnet18..152 and the family
#   topology  the service restarted with the other topology (RESNET_TOPOLOGY: per-worker against
#             shared-engine) serving SERVICE_MODEL, and /classify closed loop against it as in classify
# then a summary with every target of the issue met or missed and by how much. Writes at most 8 files
# to $OUT and prints the summary last. A stage that fails or runs out of time is recorded and the
# next one still runs; $OUT always gets check.log.
#
# On a machine with an NVIDIA GPU, onnxruntime-gpu, BentoML and Locust, the Fashion-MNIST test split
# in $FMNIST_DIR (or .device/fmnist-test):
#     OUT=/tmp/gpu-check bash bench/gpu/check.sh
# (A machine without a package registry gets those from bench/gpu/prepare.sh's .device/ folder:
#     source .device/setup.sh && bash bench/gpu/check.sh)
# Here, as a CPU rehearsal (every figure a CPU figure, said so in every report; ~2 minutes):
#     DRY_RUN=1 OUT=/tmp/gpu-check-dry bash bench/gpu/check.sh
#
# Environment (defaults for the GPU; DRY_RUN=1 shrinks them):
#   DEADLINE_S=480      the whole script, seconds (the device call also pays ~30-60 s for setup.sh)
#   STAGES=engine,serve,classify,batch,sweep,topology   which stages run (a rerun on a warm machine can
#       take fewer)
#   MODELS=resnet18,resnet34,resnet50,resnet101,resnet152       ImageNet ResNets: engine, service, sweep
#   FAMILY=resnet20,...,plain56         Fashion-MNIST nets (models/checkpoints) the engine times, at
#                                       bench.gpu.runners.FAMILY_VARIANTS (fewer variants: the budget)
#   SWEEP_FAMILY=resnet20,resnet56,resnet110,plain20,plain56    those of them served and swept
#   ENGINE_S=190        the engine benchmark's budget, exports included (it shares it out by model)
#   SERVICE_MODEL=resnet50-imagenet     what classify and batch send to
#   API_WORKERS=8 LOCUST_WORKERS=6 SERVE_MAX_BATCH=64   16 cores: service entry workers, Locust workers
#   CLASSIFY_USERS=1,32,128,256 OPEN_RATES=70% CLASSIFY_S=85   closed-loop users, open-loop rates, and
#       the seconds their runs share (CLASSIFY_DURATION=<seconds per run> overrides the share)
#   BATCH_CLIENTS=1,4,16,32 BATCH_IMAGES=16 BATCH_S=35          /classify_batch clients, images, seconds
#   (stage order = priority: the depth sweep, without a target, gets what time is left once the
#   topology stage's share is set aside; the models it runs alternate ImageNet and family, so a cut
#   sweep still has both)
#   SWEEP_USERS=1,32  SWEEP_DURATION=<what the time left allows, 3-30 s per model and load>
#   TOPOLOGY=shared-engine   (dry run: per-worker) RESNET_TOPOLOGY of the service every stage but
#       topology uses (per-worker, shared-engine, or auto: shared-engine on CUDA, per-worker on the
#       CPU, as the service resolves it); the topology stage runs the other one. RESNET_TOPOLOGY in
#       SERVE_ENV counts as TOPOLOGY when TOPOLOGY is not given.
#   TOPOLOGY_S=60  (dry run: 25) the seconds the topology stage's closed-loop runs share (at most
#       classify's seconds per run, so the two topologies' runs are alike); its service's start
#       (at most 90 s, dry run 40) and stop come on top, and all of it is set aside from the sweep
#   SERVE_ENV="RESNET_CUDA_GRAPHS=on ..."   extra service settings (service/config.py), given to the
#       service (both topologies') and recorded by the load stages
#   WORK=/tmp/gpu-check scratch (kept: a rerun on the same machine reuses the exports)
set -u
: "${OUT:?set OUT to the folder that comes back}"
cd "$(dirname "$0")/../.." || exit 1
START=$(date +%s)
DRY_RUN=${DRY_RUN:-0}
if [ "$DRY_RUN" = 1 ]; then
  : "${PYTHON:=$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
  : "${DEADLINE_S:=300}" "${MODELS:=resnet18}" "${FAMILY:=resnet20}" "${SWEEP_FAMILY:=resnet20}" "${ENGINE_S:=150}"
  : "${SERVICE_MODEL:=resnet18-imagenet}" "${API_WORKERS:=1}" "${LOCUST_WORKERS:=0}" "${SERVE_MAX_BATCH:=4}"
  : "${CLASSIFY_USERS:=1,2}" "${CLASSIFY_S:=40}" "${CLASSIFY_DURATION:=3}"
  : "${BATCH_CLIENTS:=1,2}" "${BATCH_IMAGES:=4}" "${BATCH_S:=20}" "${BATCH_DURATION:=3}"
  : "${SWEEP_USERS:=1}" "${SWEEP_DURATION:=3}" "${WORK:=/tmp/gpu-check-dry-work}"
  : "${TOPOLOGY_S:=25}"
  DEVICE=cpu TOPOLOGY_START_S=40
else
  : "${PYTHON:=python3}" "${DEADLINE_S:=480}" "${MODELS:=resnet18,resnet34,resnet50,resnet101,resnet152}"
  : "${FAMILY:=resnet20,resnet32,resnet44,resnet56,resnet110,plain20,plain32,plain44,plain56}"
  : "${SWEEP_FAMILY:=resnet20,resnet56,resnet110,plain20,plain56}" "${ENGINE_S:=190}"
  : "${SERVICE_MODEL:=resnet50-imagenet}" "${API_WORKERS:=8}" "${LOCUST_WORKERS:=6}" "${SERVE_MAX_BATCH:=64}"
  : "${CLASSIFY_USERS:=1,32,128,256}" "${CLASSIFY_S:=85}" "${BATCH_CLIENTS:=1,4,16,32}" "${BATCH_IMAGES:=16}"
  : "${BATCH_S:=35}" "${SWEEP_USERS:=1,32}" "${WORK:=/tmp/gpu-check}" "${TOPOLOGY_S:=60}"
  DEVICE=cuda TOPOLOGY_START_S=90  # guessed, not measured: 8 per-worker processes each warming its buckets
fi
: "${STAGES:=engine,serve,classify,batch,sweep,topology}" "${SERVE_ENV:=}" "${SWEEP_DURATION:=}" "${OPEN_RATES=70%}"
: "${CLASSIFY_DURATION:=}" "${BATCH_DURATION:=}"
# The two topologies: TOPOLOGY (else SERVE_ENV's RESNET_TOPOLOGY, else auto) for the first service and
# every stage but topology, the other one for the topology stage. Both are given explicitly (auto
# resolved here as the service resolves it) and SERVE_ENV's own setting is dropped, so it cannot
# override either.
topology_in_env=$(tr -s ' ' '\n' <<< "$SERVE_ENV" | sed -n 's/^RESNET_TOPOLOGY=//p' | tail -n 1)
SERVE_ENV=$(tr -s ' ' '\n' <<< "$SERVE_ENV" | grep -v '^RESNET_TOPOLOGY=' | paste -sd ' ')
: "${TOPOLOGY:=${topology_in_env:-auto}}"
if [ "$TOPOLOGY" = auto ]; then TOPOLOGY=$( [ "$DEVICE" = cuda ] && echo shared-engine || echo per-worker ); fi
case $TOPOLOGY in
  per-worker) OTHER_TOPOLOGY=shared-engine ;;
  shared-engine) OTHER_TOPOLOGY=per-worker ;;
  *) OTHER_TOPOLOGY= ;;  # said below, once check.log is written
esac
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
rm -rf "$WORK/service" "$WORK/service-topology"  # this run's load results only (the exports and the store are reused)
SERVE_PID=
PORT=

time_left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }
wants() { [[ ",$STAGES," == *",$1,"* ]]; }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$STAGES_TSV"; echo "== $1: $2 (${3}s)"; }
count() { tr ',' '\n' <<< "$1" | grep -c .; }
largest() { tr ',' '\n' <<< "$1" | sort -n | tail -n 1; }
# duration BUDGET_S RUNS OVERHEAD_S: seconds per run that fit RUNS runs (each with OVERHEAD_S of start
# and stop) in BUDGET_S, 3 to 20
duration() { local d=$(( ($1 - $2 * $3) / $2 )); (( d > 20 )) && d=20; (( d < 3 )) && d=3; echo "$d"; }
interleave() {  # interleave A,B,C X,Y -> A,X,B,Y,C
  local -a a b out=()
  IFS=, read -r -a a <<< "$1"; IFS=, read -r -a b <<< "$2"
  for (( i = 0; i < ${#a[@]} || i < ${#b[@]}; i++ )); do out+=(${a[i]:-} ${b[i]:-}); done
  (IFS=,; echo "${out[*]}")
}

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
serving() { [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; }
trap 'stop_service; exit 143' TERM INT

# ---- what this machine is --------------------------------------------------------------------
echo "== gpu check: DRY_RUN=$DRY_RUN device=$DEVICE models=$MODELS family=$FAMILY stages=$STAGES" \
     "deadline=${DEADLINE_S}s work=$WORK serve_env='$SERVE_ENV' topology=$TOPOLOGY (then $OTHER_TOPOLOGY)"
if [ -z "$OTHER_TOPOLOGY" ]; then
  echo "TOPOLOGY=$TOPOLOGY: per-worker, shared-engine or auto"
  exec 1>&3 2>&4
  wait "$TEE_PID" 2>/dev/null
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
"$PY" -c "import sys, onnxruntime as o, torch; print('python', sys.version.split()[0], '| onnxruntime', o.__version__,
o.get_available_providers(), '| torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | grep -v Warning

# ---- 1. engine: exports (registered for the service), numerics, timings, OnnxEngine, profile --------
if wants engine; then
  args=(--out "$WORK/engine" --onnx-dir "$WORK/onnx" --register --models "$MODELS${FAMILY:+,$FAMILY}"
        --deadline-s "$ENGINE_S")
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
for m in ${SWEEP_FAMILY//,/ }; do
  [ -f "$WORK/onnx/$m-fmnist.fp32.onnx" ] && served+="${served:+,}$m-fmnist"
done
# The service's settings, given to the load stages too (service_load records them beside its figures).
# Admission per API worker must not shed the load stages' own bounded load (open loop: 2x the most users).
most=$(largest "$CLASSIFY_USERS,$BATCH_CLIENTS,$SWEEP_USERS")
COMMON_SETTINGS=(RESNET_DEVICE=$DEVICE RESNET_API_WORKERS="$API_WORKERS" RESNET_MAX_BATCH_SIZE="$SERVE_MAX_BATCH"
                 RESNET_MAX_LATENCY_MS=60000 RESNET_MAX_INFLIGHT=$(( 2 * most )))
SETTINGS=("${COMMON_SETTINGS[@]}" RESNET_TOPOLOGY="$TOPOLOGY")
OTHER_SETTINGS=("${COMMON_SETTINGS[@]}" RESNET_TOPOLOGY="$OTHER_TOPOLOGY")
# start_service STAGE READY_S MODELS LOG MODELS_JSON SETTINGS...: bentoml serve on a free port (PORT,
# SERVE_PID), then stage STAGE waits at most READY_S for /readyz and writes GET /models to MODELS_JSON;
# a service not ready in time is stopped (the load stages then say so rather than time out)
start_service() {
  local name=$1 ready_s=$2 models=$3 log=$4 models_json=$5 ready group
  shift 5
  PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  echo "== $name: $models on 127.0.0.1:$PORT ($*) $SERVE_ENV"
  # setsid: the service and its workers form one process group, stopped as one at the end
  group=$(command -v setsid || true)
  env RESNET_MODELS="$models" "$@" $SERVE_ENV \
      $group "$PY" -m bentoml serve service.service:Classifier --host 127.0.0.1 --port "$PORT" \
      > "$log" 2>&1 &
  SERVE_PID=$!
  stage "$name" "$ready_s" "$PY" - "$PORT" "$SERVE_PID" "$models_json" "$(basename "$log")" <<'EOF'
import json, os, sys, time, urllib.request
port, pid, models_json, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"bentoml serve exited before it was ready (see {log})")
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
  ready=$?
  tail -n 5 "$log" | sed "s/^/   $(basename "$log"): /"
  (( ready == 0 )) || stop_service
}
if wants serve && [ -z "$served" ]; then
  record serve "skipped: no exported model in $WORK/onnx" 0
elif wants serve; then
  start_service serve 180 "$served" "$WORK/serve.log" "$WORK/models.json" "${SETTINGS[@]}"
fi

# ---- 3, 4. /classify under Locust and /classify_batch, with the CPU each side used ---------------------
load_stage() {  # load_stage NAME RUNS_S DURATION_S ARGS...: bench.gpu.service_load NAME against the service
  local name=$1 budget=$(( $2 + 20 )) seconds=$3  # + its start (imports, corpus) and a margin
  shift 3
  if ! wants "$name"; then return 0; fi
  if ! serving; then record "$name" "skipped: no running service" 0; return 0; fi
  stage "$name" "$budget" env "${SETTINGS[@]}" $SERVE_ENV "$PY" -m bench.gpu.service_load "$name" \
    --host "http://127.0.0.1:$PORT" --service-pid "$SERVE_PID" --model "$SERVICE_MODEL" --duration "$seconds" \
    --out "$WORK/service" "$@"
}
# Guessed, not measured on the GPU: ~8 s per Locust run for its processes' start and stop (2 s here)
runs=$(( $(count "$CLASSIFY_USERS") + $(count "$OPEN_RATES") ))
load_stage classify "$CLASSIFY_S" "${CLASSIFY_DURATION:-$(duration "$CLASSIFY_S" "$runs" 8)}" \
  --users "$CLASSIFY_USERS" --open-rates "$OPEN_RATES" --workers "$LOCUST_WORKERS"
runs=$(count "$BATCH_CLIENTS")
load_stage batch "$BATCH_S" "${BATCH_DURATION:-$(duration "$BATCH_S" "$runs" 2)}" \
  --users "$BATCH_CLIENTS" --images-per-request "$BATCH_IMAGES"

# ---- 5. the latency-by-depth sweep against it ------------------------------------------------------
# The topology stage comes after the sweep, not before it: the sweep then runs on the first service as
# it is, where before it would need that service started a third time (minutes of a GPU's warm-up,
# and one more chance for the sweep to find no service); classify and batch, which the targets are
# judged on, run before both either way. Its time is set aside here, so the sweep (no target) gives
# way to it: its load runs, its service's start at most and the two services' stops.
topology_share=0
wants topology && topology_share=$(( TOPOLOGY_S + 20 + TOPOLOGY_START_S + 15 ))
SWEEP_MODELS=$(interleave "$MODELS" "$SWEEP_FAMILY")
if wants sweep; then
  if ! serving; then
    record sweep "skipped: no running service" 0
  elif ! "$PY" -c "import loadtests.sweep" 2>/dev/null; then
    record sweep "skipped: loadtests.sweep does not import" 0
  else
    n_models=$(count "$SWEEP_MODELS")
    n_runs=$(( n_models * $(count "$SWEEP_USERS") ))
    # Guessed, not measured on the GPU: the sweep's own engine-only timings (~15 s per model) and
    # ~6 s per Locust run for its warm-up, start and stop (on this CPU, 5 s and 2 s). The sweep writes
    # its results.json only at its end (the summary then falls back to the Locust CSVs of the runs that
    # finished), so the duration leaves room for all of that, and 15% more, inside the time left.
    budget=$(( $(time_left) - RESERVE_S - topology_share ))
    duration=${SWEEP_DURATION:-$(( (budget * 85 / 100 - 15 * n_models - 6 * n_runs) / n_runs ))}
    (( duration > 30 )) && duration=30
    (( duration < 3 )) && duration=3
    # the service's batch limit and extra settings also for the sweep's in-process engine-only timings
    stage sweep "$budget" env RESNET_MAX_BATCH_SIZE="$SERVE_MAX_BATCH" RESNET_TOPOLOGY="$TOPOLOGY" $SERVE_ENV \
      "$PY" -m loadtests.sweep --models "$SWEEP_MODELS" --users "$SWEEP_USERS" \
      --duration "${duration}s" --warmup 1s --host "http://127.0.0.1:$PORT" --workers "$LOCUST_WORKERS" \
      --precision auto --out "$WORK/sweep"
  fi
fi
stop_service

# ---- 6. the other topology: the same /classify closed loop against the service restarted with it -------
# Only SERVICE_MODEL is served (per-worker loads every served model in every API worker; the sweep's
# models would only lengthen its start). The runs are classify's closed-loop users, each at most as
# long as classify's, written to service-topology/ beside the first service's.
if wants topology; then
  if [[ ",$served," != *",$SERVICE_MODEL,"* ]]; then
    record topology "skipped: $SERVICE_MODEL not exported in $WORK/onnx" 0
  else
    start_service topology-serve "$TOPOLOGY_START_S" "$SERVICE_MODEL" "$WORK/serve-topology.log" \
      "$WORK/models-topology.json" "${OTHER_SETTINGS[@]}"
    if ! serving; then
      record topology "skipped: no running $OTHER_TOPOLOGY service" 0
    else
      runs=$(count "$CLASSIFY_USERS")
      first=${CLASSIFY_DURATION:-$(duration "$CLASSIFY_S" $(( runs + $(count "$OPEN_RATES") )) 8)}
      seconds=$(duration "$TOPOLOGY_S" "$runs" 8)
      (( seconds > first )) && seconds=$first
      stage topology $(( TOPOLOGY_S + 20 )) env "${OTHER_SETTINGS[@]}" $SERVE_ENV "$PY" -m bench.gpu.service_load \
        classify --host "http://127.0.0.1:$PORT" --service-pid "$SERVE_PID" --model "$SERVICE_MODEL" \
        --duration "$seconds" --out "$WORK/service-topology" --users "$CLASSIFY_USERS" --workers "$LOCUST_WORKERS"
    fi
    stop_service
  fi
fi

# ---- at most 8 files to $OUT ----------------------------------------------------------------------
# check.log, summary.md, engine_{report.md,results.json,bench.png}, sweep_report.md, data.tar.gz (every
# results.json and log), raw.tar.gz (Locust's CSVs and exact latencies; their HTML pages stay here)
for f in results.json report.md engine_bench.png; do
  [ -f "$WORK/engine/$f" ] && cp "$WORK/engine/$f" "$OUT/engine_${f/engine_/}"
done
sweep_dir=$(ls -1dt "$WORK"/sweep/*/ 2>/dev/null | head -n 1)
sweep_dir=${sweep_dir%/}
[ -n "$sweep_dir" ] && [ -f "$sweep_dir/report.md" ] && cp "$sweep_dir/report.md" "$OUT/sweep_report.md"
data=(stages.tsv)
for f in serve.log models.json service/classify.json service/batch.json serve-topology.log models-topology.json \
         service-topology/classify.json; do
  [ -f "$WORK/$f" ] && data+=("$f")
done
for f in "$WORK"/onnx/*.json; do [ -f "$f" ] && data+=("onnx/$(basename "$f")"); done
if [ -n "$sweep_dir" ]; then
  for f in "$sweep_dir"/*; do [ -f "$f" ] && data+=("${f#"$WORK"/}"); done
fi
tar -czf "$OUT/data.tar.gz" -C "$WORK" "${data[@]}"
raw=()
[ -d "$WORK/service/raw" ] && raw+=(service/raw)
[ -d "$WORK/service-topology/raw" ] && raw+=(service-topology/raw)
[ -n "$sweep_dir" ] && [ -d "$sweep_dir/raw" ] && raw+=("${sweep_dir#"$WORK"/}/raw")
if (( ${#raw[@]} )); then
  tar -czf "$OUT/raw.tar.gz" -C "$WORK" --exclude='*.html' "${raw[@]}"
  if (( $(stat -c %s "$OUT/raw.tar.gz") > 15 * 1024 * 1024 )); then  # the exact latencies are the bulk
    tar -czf "$OUT/raw.tar.gz" -C "$WORK" --exclude='*.html' --exclude='*_latencies.json' "${raw[@]}"
  fi
fi
dry=(); [ "$DRY_RUN" = 1 ] && dry=(--dry-run)
"$PY" -m bench.gpu.summary --stages "$STAGES_TSV" --engine "$WORK/engine/results.json" \
  --classify "$WORK/service/classify.json" --batch "$WORK/service/batch.json" \
  --classify-other "$WORK/service-topology/classify.json" \
  --sweep "${sweep_dir:-/nonexistent}/results.json" --sweep-raw "${sweep_dir:-/nonexistent}/raw" \
  ${dry[@]+"${dry[@]}"} > "$OUT/summary.md" 2>&1
n=$(ls -1 "$OUT" | wc -l)
if (( n > 8 )); then  # never expected; the device returns at most 8 files
  extra=$(ls -1 "$OUT" | grep -vE '^(check.log|summary.md|engine_report.md|engine_results.json|engine_bench.png|sweep_report.md|data.tar.gz|raw.tar.gz)$')
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
