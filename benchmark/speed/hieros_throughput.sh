#!/usr/bin/env bash
# Throughput of hieros_s5_torch.py (random data, CPU, 1 thread): one configuration per process, results appended as
# JSON lines to benchmark/results/hieros_throughput.jsonl, with wall and CPU seconds and the 1-minute load average
# (this machine was shared and overloaded when these were measured, see docs/hieros.md).
case "${1:-}" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
set -euo pipefail
cd "$(dirname "$0")/../.."
B="benchmark/speed/hieros_throughput.py"
python $B --size debug --levels 1 --batch 16 --length 64 --updates 2 --policy-steps 64
python $B --size debug --levels 3 --batch 16 --length 64 --updates 2 --policy-steps 64
python $B --size paper --levels 3 --batch 16 --length 64 --updates 1 --policy-steps 16
python $B --size paper --levels 1 --batch 16 --length 64 --updates 1 --policy-steps 16 --bf16
