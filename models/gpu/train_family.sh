#!/usr/bin/env bash
# Trains the Fashion-MNIST family on the lent GPU machine, one `python -m models.train` process per
# model, all at once: these small nets leave an H100 mostly idle one at a time, so processes share it.
# Anything still running at the deadline is stopped; its train_state.pt comes back, so
# `python -m models.train ... --resume` finishes it later; this script passes --resume itself, so
# carrying runs/gpu/NAME back to the device continues those runs.
#
# Usage (repository root, on the device; see ../shared/device/README.md for how calls are made):
#   FMNIST_DIR=.device/fmnist OUT=$OUT bash models/gpu/train_family.sh
# Results: $OUT/runs.tar.gz.partNN (15 MiB pieces) and $OUT/train_family.log.
set -u
: "${OUT:?set OUT to the folder that comes back}"
EPOCHS=${EPOCHS:-30}
DEADLINE_S=${DEADLINE_S:-420}
MODELS=${MODELS:-"resnet110 resnet56 plain56 resnet44 plain44 resnet32 plain32 resnet20 plain20"}
RUNS=runs/gpu
mkdir -p "$RUNS"
exec > >(tee "$OUT/train_family.log") 2>&1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
start=$(date +%s)
for m in $MODELS; do
  OMP_NUM_THREADS=1 python3 -m models.train --model "$m" --epochs "$EPOCHS" --grad-norms \
    --resume --out "$RUNS/$m" >> "$RUNS/$m.log" 2>&1 &
done
while [ $(( $(date +%s) - start )) -lt "$DEADLINE_S" ]; do
  # jobs -r lists the children still running (kill -0 would also count reaped-later zombies).
  [ -z "$(jobs -rp)" ] && break
  sleep 5
done
kill $(jobs -rp) 2>/dev/null
wait $(jobs -p)  # not a bare `wait`: it would also wait for the tee above, forever
echo "elapsed $(( $(date +%s) - start )) s"
for m in $MODELS; do
  printf '%-10s %s\n' "$m" "$(grep -E 'epoch [0-9]+/|test accuracy' "$RUNS/$m.log" | tail -1)"
done
# Finished runs need only their checkpoint; unfinished ones keep train_state.pt for --resume.
for m in $MODELS; do [ -f "$RUNS/$m/metadata.json" ] && rm -f "$RUNS/$m/train_state.pt"; done
tar -czf - "$RUNS" | split -b 15M -d - "$OUT/runs.tar.gz.part"
ls -la "$OUT"
