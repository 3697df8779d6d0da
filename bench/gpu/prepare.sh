#!/usr/bin/env bash
# Here, once per machine, before the GPU check: fills .device/ with what bench/gpu/check.sh needs
# on the device. ../shared/device/pack.sh (~4 minutes: onnxruntime-gpu in four chunks, halved below; the wheels
# of BentoML and Locust, setup.sh), then the Fashion-MNIST test split (4.3 MiB) that every export's
# verification reads, in .device/fmnist-test. pack.sh empties .device/ first: an existing
# .device/fmnist (bench/gpu/train_family.sh's) is kept aside and put back.
# Usage (from the project root): bash bench/gpu/prepare.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
src=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
[ -f "$src/t10k-images-idx3-ubyte.gz" ] || src=.device/fmnist
[ -f "$src/t10k-images-idx3-ubyte.gz" ] || { echo "no Fashion-MNIST test split in \$FMNIST_DIR, $src: make dataset" >&2; exit 1; }
keep=$(mktemp -d)
trap 'rm -rf "$keep"' EXIT
cp "$src"/t10k-images-idx3-ubyte.gz "$src"/t10k-labels-idx1-ubyte.gz "$keep/"
[ -d .device/fmnist ] && mv .device/fmnist "$keep/fmnist"
bash ../shared/device/pack.sh
[ -d "$keep/fmnist" ] && mv "$keep/fmnist" .device/fmnist
mkdir -p .device/fmnist-test
cp "$keep"/t10k-*.gz .device/fmnist-test/
# The working tree travels with every device call (~27 MiB since the depth study's checkpoints are
# tracked) and a call carries at most 64 MiB, so pack.sh's ~49 MiB chunks are halved: .device/ortNa
# and .device/ortNb, sent in eight calls (the commands this script prints last), joined again on the device.
for i in 0 1 2 3; do
  f=.device/ort$i/ort.part.0$i
  [ -f "$f" ] || { echo "pack.sh left no $f" >&2; exit 1; }
  half=$(( ($(stat -c %s "$f") + 1) / 2 ))
  mkdir -p .device/ort${i}a .device/ort${i}b
  head -c "$half" "$f" > .device/ort${i}a/part
  tail -c +"$((half + 1))" "$f" > .device/ort${i}b/part
  cmp -s "$f" <(cat .device/ort${i}a/part .device/ort${i}b/part) || { echo "halving $f failed" >&2; exit 1; }
  rm -r .device/ort$i
done
du -sh .device/* | sed 's/^/   /'
echo "eight chunk calls, N = 0..3: carry .device/ortNa: mkdir -p /tmp/ortgz && cp .device/ortNa/part /tmp/ortgz/ort.part.0N"
echo "                               carry .device/ortNb: cat .device/ortNb/part >> /tmp/ortgz/ort.part.0N"
echo "carried by the check call: .device/wheels .device/ort.sha256 .device/setup.sh .device/fmnist-test"
