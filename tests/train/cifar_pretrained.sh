#!/bin/sh
# eval: the pretrained ResNet-20 (ONNX) scores the README's 80.73% top-1 on the CIFAR-10 JPEG
# container's /test, read straight from the container (libjpeg-turbo decode, normalisation
# (x/255 - mean)/std). A decoder may move a pixel by 1, so +-0.15 points are allowed.
# Usage: cifar_pretrained.sh DRIVER [SHARED_DATA_DIR]
set -u
driver=$1
shared=${2:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/data}
for f in "$shared/cifar10-jpeg.h5" "$shared/models/resnet20-cifar10.onnx"; do
  [ -r "$f" ] || { echo "skip: $f absent"; exit 77; }
done
out=$(OMP_WAIT_POLICY=PASSIVE "$driver" eval "$shared/models/resnet20-cifar10.onnx" \
      "$shared/cifar10-jpeg.h5" --split test --mean 0.4914,0.4822,0.4465 \
      --std 0.2470,0.2435,0.2616 --threads 2) || { echo "FAIL lathe eval exited $?"; exit 1; }
echo "$out"
/usr/bin/python3 -c '
import json, sys
r = json.loads(sys.argv[1])
ok = r["samples"] == 10000 and abs(r["accuracy"] - 0.8073) <= 0.0015
acc = r["accuracy"]
print(("ok  " if ok else "FAIL") + f" pretrained ResNet-20 on cifar10-jpeg /test: {acc:.4f} (reference 0.8073)")
sys.exit(0 if ok else 1)' "$out"
