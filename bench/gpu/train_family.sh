#!/usr/bin/env bash
# Trains the depth study's ten nets on the lent GPU machine with one `python -m models.train_family`
# process (the ten stepped in turn on shared on-device batches), its epochs chosen to fill BUDGET_S of
# training, the call ended at an epoch boundary before DEADLINE_S so that the results are packed inside
# a device call's 10 minutes. A second call with RESUME=1, sent at once (the machine stays warm 30 s and
# keeps the git-ignored runs/ between calls), trains the rest of the budget and finishes the run.
#
# Here, once: the data travel in .device/fmnist (31 MB; with the ~28 MiB tree, under the 64 MiB a call
# carries), which git must ignore (`git check-ignore -q .device/x || echo /.device/ >> .git/info/exclude`):
#     mkdir -p .device/fmnist && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .device/fmnist/
# On the device (no setup.sh: its own PyTorch, numpy, tqdm and safetensors are all this needs), each call
# with carry [".device/fmnist"] and timeout_s 600:
#     bash bench/gpu/train_family.sh              # 1: probe, choose the epochs, train until DEADLINE_S
#     RESUME=1 bash bench/gpu/train_family.sh     # 2, at once: the rest of BUDGET_S, then give_back
# Then here: mkdir -p runs/family && cat weights.tar.part* | tar -xf - -C runs/family &&
#     tar -xzf results.tar.gz -C runs/family && python -m bench.depth_study.study --report-only --runs runs/family
# As a CPU rehearsal (two small nets, a few hundred images):
#     DRY_RUN=1 OUT=/tmp/family-sh bash bench/gpu/train_family.sh   (and again with RESUME=1)
#
# $OUT gets at most 8 files of at most 16 MiB: train_family.log; family.json (the measurements, the
# choices, each net's history so far); results.tar.gz (each finished net's metadata.json and
# grad_norms.json); weights.tar.partNN (the finished nets' model.safetensors, ~31 MiB for the ten, in
# 15 MiB pieces). An unfinished run's train_state.pt files (~62 MiB for the ten: weights and momentum)
# stay on the machine for RESUME=1: beside the rest they fit neither what a call returns nor what it carries.
#
# Environment: BUDGET_S=660 (training seconds, both calls together), DEADLINE_S=540 (this call, packing
# included), MODELS (default: the ten), RUNS=runs/family, COMPILE=auto, EXTRA_ARGS (more flags).
set -u
: "${OUT:?set OUT to the folder that comes back}"
cd "$(dirname "$0")/../.." || exit 1
START=$(date +%s)
if [ "${DRY_RUN:-0}" = 1 ]; then
  : "${PYTHON:=$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
  if [ -z "${RUNS:-}" ]; then  # a rehearsal starts afresh unless it resumes
    RUNS=/tmp/family-sh-runs
    [ "${RESUME:-0}" = 1 ] || rm -rf "$RUNS"
  fi
  : "${DEADLINE_S:=300}" "${BUDGET_S:=60}" "${MODELS:=resnet20,plain20}"
  EXTRA=(--device cpu --train-limit 512 --test-limit 256 --epochs 2)
else
  : "${PYTHON:=python3}" "${RUNS:=runs/family}" "${DEADLINE_S:=540}" "${BUDGET_S:=660}" "${MODELS:=}"
  EXTRA=(--device cuda)
  if [ -z "${FMNIST_DIR:-}" ] && [ -d .device/fmnist ]; then export FMNIST_DIR=$PWD/.device/fmnist; fi
fi
PACK_S=20  # kept for packing the results
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
exec 3>&1 4>&2
exec > >(tee "$OUT/train_family.log") 2>&1
TEE_PID=$!

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
args=(--out "$RUNS" --budget-s "$BUDGET_S" --compile "${COMPILE:-auto}" "${EXTRA[@]}")
[ -n "$MODELS" ] && args+=(--models "$MODELS")
[ "${RESUME:-0}" = 1 ] && args+=(--resume)
left=$(( DEADLINE_S - ($(date +%s) - START) - PACK_S ))
echo "== python -m models.train_family ${args[*]} --deadline-s $left ${EXTRA_ARGS:-}"
# timeout: a last guard should a compile or a step hang past the deadline the run keeps itself
timeout -k 10 $(( left + 30 )) "$PYTHON" -m models.train_family "${args[@]}" --deadline-s "$left" ${EXTRA_ARGS:-}
echo "== exit status $? after $(( $(date +%s) - START )) s"

# ---- at most 8 files to $OUT -------------------------------------------------------------------------
[ -f "$RUNS/family.json" ] && cp "$RUNS/family.json" "$OUT/family.json"
small=$(cd "$RUNS" && ls -1 -- */metadata.json */grad_norms.json 2>/dev/null)
[ -n "$small" ] && tar -czf "$OUT/results.tar.gz" -C "$RUNS" $small
weights=$(cd "$RUNS" && ls -1 -- */model.safetensors 2>/dev/null)
[ -n "$weights" ] && tar -cf - -C "$RUNS" $weights | split -b 15M -d - "$OUT/weights.tar.part"
n=$(ls -1 "$OUT" | wc -l)
(( n > 8 )) && echo "WARNING: $n files in \$OUT; only 8 come back"
for f in "$OUT"/*; do
  (( $(stat -c %s "$f") > 16 * 1024 * 1024 )) && echo "WARNING: $(basename "$f") is over 16 MiB and will not come back"
done
ls -l "$OUT" | tail -n +2
[ -f "$RUNS/family.json" ] && "$PYTHON" - "$RUNS/family.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"\n{r['environment']['device']}: {r.get('epochs', '?')} epochs ({r.get('epochs_from', '')}), "
      f"{r['spent_s']:.0f} of {r['budget_s']:.0f} s spent; compile: {r['compile'].get('decision', '-')}")
print("calls: " + "; ".join(f"{c.get('status', '?')} after {c.get('wall_s', '?')} s" for c in r["calls"]))
print(f"{'net':<10} {'epochs':>7} {'train err':>9} {'test err':>9} {'s/epoch':>8}")
for name, n in r["nets"].items():
    h = n["history"][-1] if n["history"] else {}
    print(f"{name:<10} {n['epoch']:>3}/{r.get('epochs', '?'):<3} {h.get('train_error', float('nan')):>8.2f}% "
          f"{h.get('test_error', float('nan')):>8.2f}% {h.get('seconds', float('nan')):>8.1f}")
EOF
exec 1>&3 2>&4
wait "$TEE_PID" 2>/dev/null
exit 0
