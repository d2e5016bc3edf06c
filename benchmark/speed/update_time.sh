#!/usr/bin/env bash
# Update time, compile time and peak RSS: dreamerv3_jax.py vs thick_dreamer_jax.py at the same size (Crafter shapes).
# One process per measurement; base and THICK alternate so both see similar machine load. Results are appended to
# benchmark/results/thick_update_time.jsonl; a summary table is printed at the end (each THICK row against the
# DreamerV3 row measured just before it).
#   bash benchmark/speed/update_time.sh                          # 12m, batch 16 x 64
#   COARSE_DEC_DEPTH=4 bash benchmark/speed/update_time.sh       # + THICK with the cheaper coarse decoder (depth 4)
#   JEMALLOC=1 bash benchmark/speed/update_time.sh               # under jemalloc (apt install libjemalloc2), which keeps
#                                                                # freed pages: no page faults per update
#                                                                # (docs/notes/cpu-update-time.md)
case "${1:-}" in -h | --help) sed -n "2,/^set /{/^#/p}" "$0"; exit 0 ;; esac  # --help: the comments above
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE="${SIZE:-12m}"; BATCH="${BATCH:-16}"; LENGTH="${LENGTH:-64}"; UPDATES="${UPDATES:-3}"; REPEATS="${REPEATS:-1}"
COARSE_DEC_DEPTH="${COARSE_DEC_DEPTH:-0}"
if [ "${JEMALLOC:-0}" = 1 ]; then
  JE=$(ls /usr/lib/*/libjemalloc.so.2 /usr/lib/libjemalloc.so.2 2>/dev/null | head -n 1 || true)
  [ -n "$JE" ] || { echo "JEMALLOC=1: libjemalloc.so.2 not found (apt install libjemalloc2)" >&2; exit 1; }
  export LD_PRELOAD="$JE" MALLOC_CONF="${MALLOC_CONF:-narenas:1,dirty_decay_ms:-1,muzzy_decay_ms:-1}"
fi
run() {
  python benchmark/speed/update_time.py --model-size "$SIZE" --batch-size "$BATCH" --batch-length "$LENGTH" \
    --updates "$UPDATES" "$@"
}
for _ in $(seq "$REPEATS"); do
  run --script dreamerv3_jax
  run --script thick_dreamer_jax
  if [ "$COARSE_DEC_DEPTH" != 0 ]; then run --script thick_dreamer_jax --coarse-dec-depth "$COARSE_DEC_DEPTH"; fi
done
python - <<'PY'
import json
recs = [json.loads(line) for line in open("benchmark/results/thick_update_time.jsonl")]
for r in recs:
    r.setdefault("allocator", "glibc")  # records before the allocator field were all glibc
rows = ["| script | size | batch | allocator | params | compile s | s / update (median) | peak RSS GiB | load avg (1 min) | time |",
        "|---|---|---|---|---|---|---|---|---|---|"]
for r in recs:
    rows.append(f"| {r['script']} | {r['model_size']} | {r['batch'][0]}x{r['batch'][1]} | {r['allocator']} | "
                f"{r['params']:,} | {r['compile_s']} | "
                f"{r['update_s_median']} | {r['peak_rss_gib']} | {r['load_avg'][0]:.1f} | {r['time']} |")
rows += ["", "| size | batch | allocator | THICK variant | update-time ratio THICK / DreamerV3 | peak-RSS ratio | compile-time ratio |",
         "|---|---|---|---|---|---|---|"]
base = None
for r in recs:  # each THICK record against the latest DreamerV3 record of the same size, batch and allocator
    if r["script"] == "dreamerv3_jax":
        base = r
    elif base and all(base[k] == r[k] for k in ("model_size", "batch", "allocator")):
        rows.append(f"| {r['model_size']} | {r['batch'][0]}x{r['batch'][1]} | {r['allocator']} | {r['script']} | "
                    f"{r['update_s_median'] / base['update_s_median']:.2f} | {r['peak_rss_gib'] / base['peak_rss_gib']:.2f} | "
                    f"{r['compile_s'] / base['compile_s']:.2f} |")
print("\n".join(rows))
PY
