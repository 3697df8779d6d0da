#!/usr/bin/env bash
# Here, once per machine, before the GPU check: fills .device/ with what loadtests/gpu/check.sh needs
# on the device. ../shared/device/pack.sh (~4 minutes: onnxruntime-gpu in four chunks, the wheels
# of BentoML and Locust, setup.sh), then the Fashion-MNIST test split (4.3 MiB) that every export's
# verification reads, in .device/fmnist-test. pack.sh empties .device/ first: an existing
# .device/fmnist (models/gpu/train_family.sh's) is kept aside and put back.
# Usage (from the project root): bash loadtests/gpu/prepare.sh
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
du -sh .device/* | sed 's/^/   /'
echo "carried by the check call: .device/wheels .device/ort.sha256 .device/setup.sh .device/fmnist-test"
