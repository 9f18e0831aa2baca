#!/usr/bin/env bash
# All the speed benchmarks on one CUDA machine, in one command:
#
#   bash benchmarks/gpu.sh            # env: PYTHON, WORKERS (loader workers, default min(8, cores)), CACHE, SRC
#
# 1. step.py at batch 512 with the ablation (fp32+plain Adam, +fused Adam, +channels_last,
#    +bf16, + torch.compile in each mode below), the FLOP count / MFU and the convolution-only
#    ceiling (each cuDNN convolution of the step replayed alone), then at batch 128;
# 2. loader.py (StreamLoader vs ImageFolder at the same workers, and the .npy what-if);
# 3. end_to_end.py at batch 512 (the real trainer vs the textbook trainer, data included);
# 4. memory.py (max_memory_allocated per batch size);
# and merges everything into benchmarks/results/<gpu-name>.json.
# A benchmark that fails is recorded in the merged JSON under "failures"; the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: no CUDA device visible to torch; run the CPU benchmarks directly (see benchmarks/README.md)" >&2
  exit 2
fi
GPU=$($PY -c "import torch; print(torch.cuda.get_device_name(0))")
SLUG=$(echo "$GPU" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')
CORES=$($PY -c "import os; print(os.cpu_count() or 2)")
WORKERS=${WORKERS:-$(( CORES < 8 ? CORES : 8 ))}
COMPILE_MODES=${COMPILE_MODES:-default,reduce-overhead}
TMP=$(mktemp -d)
FAIL="$TMP/failures.txt"; : > "$FAIL"
EXTRA=()
[ -n "${CACHE:-}" ] && EXTRA+=(--cache "$CACHE")
[ -n "${SRC:-}" ] && EXTRA+=(--src "$SRC")
echo "== $GPU -> benchmarks/results/$SLUG.json (workers $WORKERS, scratch $TMP)"

run() {  # name, command...
  local name=$1; shift
  echo "== $name: $*"
  if ! "$@"; then echo "$name" >> "$FAIL"; echo "!! $name failed" >&2; fi
}

run step512 $PY benchmarks/step.py --device cuda --batch 512 --iters 20 --repeats 5 --warmup 5 \
    --ablation --compile-modes "$COMPILE_MODES" --conv-ceiling --out "$TMP/step512.json"
run step128 $PY benchmarks/step.py --device cuda --batch 128 --iters 30 --repeats 5 --warmup 5 --out "$TMP/step128.json"
run loader $PY benchmarks/loader.py --device cuda --batch 512 --workers "$WORKERS" --batches 40 --repeats 3 \
    --step-json "$TMP/step512.json" --out "$TMP/loader.json" "${EXTRA[@]}"
run end_to_end $PY benchmarks/end_to_end.py --device cuda --batch 512 --steps 300 --every 20 --workers "$WORKERS" \
    --repeats 2 --out "$TMP/end_to_end.json" "${EXTRA[@]}"
run memory $PY benchmarks/memory.py --device cuda --out "$TMP/memory.json"

$PY - "$TMP" "$GPU" "benchmarks/results/$SLUG.json" <<'PYEOF'
import json, sys
from pathlib import Path
from benchmarks import common
import torch

tmp, gpu, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
parts = {}
for name in ("step512", "step128", "loader", "end_to_end", "memory"):
    p = tmp / f"{name}.json"
    if p.is_file():
        parts[name] = json.loads(p.read_text())
failures = [l for l in (tmp / "failures.txt").read_text().split() if l]
summary = {}
if "step512" in parts:
    r = parts["step512"]["results"]
    summary.update(step512_dist_gan_img_s=r["dist_gan"]["img_per_s"], step512_textbook_img_s=r["textbook"]["img_per_s"],
                   step512_ratio=r["ratio"], flops_per_image=r.get("flops_per_image", {}).get("dist_gan"),
                   flops_per_image_textbook=r.get("flops_per_image", {}).get("textbook"), mfu=r.get("mfu"),
                   best_compile_mode=max(((k, v["img_per_s"]) for k, v in r.get("ablation", {}).items() if "compile" in k),
                                         key=lambda kv: kv[1], default=(None, None))[0])
    if "conv_ceiling" in r:  # how far the step is from its convolutions alone: launch- or kernel-bound
        summary.update(step512_conv_only_ceiling_img_s=r["conv_ceiling"]["dist_gan"]["ceiling_img_per_s"],
                       step512_conv_share=r["conv_ceiling"]["summary"]["dist_gan_conv_share"])
if "step128" in parts:
    r = parts["step128"]["results"]
    summary.update(step128_dist_gan_img_s=r["dist_gan"]["img_per_s"], step128_textbook_img_s=r["textbook"]["img_per_s"], step128_ratio=r["ratio"])
if "loader" in parts:
    r = parts["loader"]["results"]
    summary.update(loader_stream_img_s=r["dist_gan_stream"]["img_per_s"], loader_imagefolder_img_s=r["imagefolder"]["img_per_s"],
                   loader_ratio=r["ratio_stream_vs_imagefolder"], loader_vs_step=r.get("ratio_stream_vs_step"))
if "end_to_end" in parts:
    r = parts["end_to_end"]["results"]
    summary.update(e2e_dist_gan_img_s=r["dist_gan"]["img_per_s"], e2e_textbook_img_s=r["textbook"]["img_per_s"], e2e_ratio=r["ratio"])
merged = {"schema": common.SCHEMA, "benchmark": "gpu_suite", "gpu": gpu, "machine": common.machine_info(torch.device("cuda")),
          "commit": common.git_commit(), "summary": summary, "failures": failures, "parts": parts}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(merged, indent=2) + "\n")
print(json.dumps(summary, indent=2))
print(f"wrote {out}" + (f" (failed: {', '.join(failures)})" if failures else ""))
PYEOF
