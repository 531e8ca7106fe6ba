#!/bin/sh
# lathe data convert / eval / the train job on bad input: exit status 2 and a message that names
# the fault and the fix. Usage: cli_errors.sh DRIVER
set -u
driver=$1
work=$(mktemp -d /tmp/lathe-cli-errors.XXXXXX)
trap 'rm -rf "$work"' EXIT
fails=0
# expect NAME STATUS TEXT -- COMMAND...: runs COMMAND, checks its exit status and stderr+stdout.
expect() {
  name=$1 want=$2 text=$3; shift 4
  out=$("$@" 2>&1); got=$?
  if [ "$got" -ne "$want" ] || ! printf '%s' "$out" | grep -qF -- "$text"; then
    echo "FAIL $name: exit $got (want $want), output: $out"; fails=$((fails + 1))
  else
    echo "ok   $name"
  fi
}
# A tiny IDX set: 2 images of 4x4 pixels per split (smallcnn pools twice, so 4x4 still fits).
mkdir -p "$work/idx" "$work/gz"
for s in train t10k; do
  { printf '\000\000\010\003\000\000\000\002\000\000\000\004\000\000\000\004'; head -c 32 /dev/urandom; } > "$work/idx/$s-images-idx3-ubyte"
  printf '\000\000\010\001\000\000\000\002\000\011' > "$work/idx/$s-labels-idx1-ubyte"
  gzip -c "$work/idx/$s-images-idx3-ubyte" > "$work/gz/$s-images-idx3-ubyte.gz"
  gzip -c "$work/idx/$s-labels-idx1-ubyte" > "$work/gz/$s-labels-idx1-ubyte.gz"
done
expect "convert: IDX folder" 0 '"splits":"test,train"' -- "$driver" data convert "$work/idx" "$work/d.h5"
expect "convert: gzip-only folder names gunzip" 2 "gunzip -k" -- "$driver" data convert "$work/gz" "$work/e.h5"
expect "convert: missing input" 2 "does not exist" -- "$driver" data convert "$work/nope.h5" "$work/f.h5"
expect "eval: unknown model" 2 "neither a zoo model" -- "$driver" eval nosuchnet "$work/d.h5"
expect "eval: missing split lists the present ones" 2 "groups present: test,train" -- "$driver" eval smallcnn "$work/d.h5" --split val
expect "eval: mean/std counts differ" 2 "same number" -- "$driver" eval smallcnn "$work/d.h5" --mean 0.1,0.2 --std 0.3
expect "eval: a dataset is not a model" 2 "is not a Lathe checkpoint" -- "$driver" eval "$work/d.h5" "$work/d.h5"
cat > "$work/bad.json" <<JSON
{"kind": "train", "spec": {"model": {"zoo": "smallcnn"}, "dataset": "$work/d.h5", "epochs": 0}}
JSON
expect "train: spec fault names the path" 2 "must be >= 1" -- "$driver" run "$work/bad.json" --out "$work/o1"
cat > "$work/big.json" <<JSON
{"kind": "train", "spec": {"model": {"zoo": "smallcnn"}, "dataset": "$work/d.h5", "batch_size": 64, "threads": 1}}
JSON
expect "train: batch larger than the split" 2 "exceeds the 2 samples" -- "$driver" run "$work/big.json" --out "$work/o2"
[ $fails -eq 0 ]
