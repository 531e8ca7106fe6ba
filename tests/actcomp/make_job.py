#!/usr/bin/python3
"""Prints a job file: an example job (schema/jobs/*.example.json) with its dataset replaced and the
keys of .spec given as a JSON object overridden (objects merged one level deep, so
{"activation_compression": {"mode": "off"}} keeps the example's other compression settings).
Shared by tests/actcomp/job_actcomp.sh and tests/bench/actcomp/run.sh.

Usage: make_job.py EXAMPLE.json DATASET '{"seed": 2, ...}' > job.json"""
import json
import sys

job = json.load(open(sys.argv[1]))
job["spec"]["dataset"] = sys.argv[2]
for key, value in json.loads(sys.argv[3] if len(sys.argv) > 3 else "{}").items():
    if isinstance(value, dict) and isinstance(job["spec"].get(key), dict):
        job["spec"][key].update(value)
    else:
        job["spec"][key] = value
print(json.dumps(job, indent=1))
