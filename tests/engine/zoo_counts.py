"""zoo: every model's MACs and parameter count equal those of its PyTorch twin.

Usage: /usr/bin/python3 zoo_counts.py PATH/TO/engine_ref_zoo_counts"""
import subprocess
import sys

import torch_zoo

out = subprocess.run([sys.argv[1]], check=True, capture_output=True, text=True).stdout
bad = 0
for line in out.split("\n"):
    if not line.strip():
        continue
    name, macs, params = line.split()
    want_macs, want_params = torch_zoo.count(*torch_zoo.build(name))
    ok = int(macs) == want_macs and int(params) == want_params
    bad += not ok
    print("%s %-9s lathe %11s MACs %9s params | torch %11d MACs %9d params" %
          ("ok  " if ok else "FAIL", name, macs, params, want_macs, want_params))
sys.exit(1 if bad else 0)
