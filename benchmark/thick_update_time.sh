#!/usr/bin/env bash
# Update time, compile time and peak RSS: dreamerv3_jax.py vs thick_dreamer_jax.py at the same size (Crafter shapes).
# One process per measurement; base and THICK alternate so both see similar machine load. Results are appended to
# benchmark/results/thick_update_time.jsonl and summarised into thick_update_time.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${SIZE:-12m}"; BATCH="${BATCH:-8}"; LENGTH="${LENGTH:-64}"; UPDATES="${UPDATES:-3}"; REPEATS="${REPEATS:-1}"
for _ in $(seq "$REPEATS"); do
  for script in dreamerv3_jax thick_dreamer_jax; do
    .venv/bin/python benchmark/thick_update_time.py --script "$script" --model-size "$SIZE" --batch-size "$BATCH" \
      --batch-length "$LENGTH" --updates "$UPDATES"
  done
done
.venv/bin/python - <<'PY'
import json
recs = [json.loads(line) for line in open("benchmark/results/thick_update_time.jsonl")]
rows = ["| script | size | batch | params | compile s | s / update (median) | peak RSS GiB | load avg (1 min) | time |",
        "|---|---|---|---|---|---|---|---|---|"]
for r in recs:
    rows.append(f"| {r['script']} | {r['model_size']} | {r['batch'][0]}x{r['batch'][1]} | {r['params']:,} | {r['compile_s']} | "
                f"{r['update_s_median']} | {r['peak_rss_gib']} | {r['load_avg'][0]:.1f} | {r['time']} |")
pairs = []
for i in range(len(recs) - 1):
    a, b = recs[i], recs[i + 1]
    if a["script"] == "dreamerv3_jax" and b["script"] == "thick_dreamer_jax" and a["model_size"] == b["model_size"] and a["batch"] == b["batch"]:
        pairs.append((b["update_s_median"] / a["update_s_median"], b["peak_rss_gib"] / a["peak_rss_gib"], b["compile_s"] / a["compile_s"], a))
rows += ["", "| size | batch | update-time ratio THICK / DreamerV3 | peak-RSS ratio | compile-time ratio |", "|---|---|---|---|---|"]
for t, m, c, a in pairs:
    rows.append(f"| {a['model_size']} | {a['batch'][0]}x{a['batch'][1]} | {t:.2f} | {m:.2f} | {c:.2f} |")
open("benchmark/results/thick_update_time.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
