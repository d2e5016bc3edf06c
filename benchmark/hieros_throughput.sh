#!/usr/bin/env bash
# Throughput of hieros_s5_torch.py (random data, CPU): one configuration per process, results appended as JSON lines to
# benchmark/results/hieros_throughput.jsonl (with the 1-minute load average: this machine is shared, see docs/hieros.md).
set -euo pipefail
cd "$(dirname "$0")/.."
B="benchmark/hieros_throughput.py"
.venv/bin/python $B --size debug --levels 1 --batch 16 --length 64 --updates 3 --policy-steps 128
.venv/bin/python $B --size debug --levels 3 --batch 16 --length 64 --updates 3 --policy-steps 128
.venv/bin/python $B --size paper --levels 1 --batch 16 --length 64 --updates 1 --policy-steps 32
.venv/bin/python $B --size paper --levels 1 --batch 16 --length 64 --updates 1 --policy-steps 32 --bf16
.venv/bin/python $B --size paper --levels 3 --batch 16 --length 64 --updates 1 --policy-steps 32
