#!/usr/bin/env bash
# The one prepared check for a machine with an NVIDIA GPU (issue 14): on a fresh machine with a
# driver and Python, install fastnn with its CUDA extra and find out whether the CuPy backend
# works, is right and is fast. Every result goes to one folder: $OUT if set (the device tool's),
# else ./gpu-check. Without a GPU it says so plainly and exits 0 after the CPU-side facts.
#
#   bash benchmarks/gpu_check.sh            # about 5-8 minutes on one GPU
#
# Stages (each with its own time limit, each logged to its own file, a summary at the end):
#   1. the driver and device (nvidia-smi), then pip install -e '.[cuda12|cuda13,test]'
#   2. fastnn info: does auto pick cupy, and if not, why
#   3. pytest -m gpu: the conformance suite on the real backend against the float64 NumPy
#      reference, and a training run compared with NumPy
#   4. training speed: digits and 784-1024-1024-10 on cupy, numba and (if installed) PyTorch CUDA
#   5. compute-sanitizer memcheck and racecheck over a short training run, when present
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-$PWD/gpu-check}"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
stage() {  # stage NAME SECONDS COMMAND...: run, log to NAME.log, record the outcome
    local name=$1 limit=$2; shift 2
    local started=$SECONDS
    timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    say "$(printf '%-12s rc=%-3s %4ss  (log: %s.log)' "$name" "$rc" "$((SECONDS - started))" "$name")"
    return $rc
}

say "gpu_check $(date -u +%FT%TZ) on $(hostname); python $(python -c 'import platform; print(platform.python_version())')"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L > "$OUT_DIR/nvidia-smi.txt" 2>&1; then
    say "NO GPU: nvidia-smi is missing or lists no device; nothing GPU-side was checked."
    pip install -q -e '.[test]' > "$OUT_DIR/install.log" 2>&1
    fastnn info > "$OUT_DIR/info.txt" 2>&1
    say "fastnn info (CPU side) is in info.txt; $(grep -o "auto -> [a-z]*" "$OUT_DIR/info.txt")"
    exit 0
fi
nvidia-smi >> "$OUT_DIR/nvidia-smi.txt" 2>&1
say "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
CUDA_MAJOR=$(nvidia-smi | grep -o 'CUDA Version: [0-9]*' | grep -o '[0-9]*$')
EXTRA=cuda12; [ "${CUDA_MAJOR:-12}" -ge 13 ] && EXTRA=cuda13
say "driver supports CUDA ${CUDA_MAJOR:-?}: installing the $EXTRA extra"

stage install 300 pip install -e ".[$EXTRA,test]" || { say "install failed: see install.log"; exit 1; }
stage info 60 fastnn info
say "  $(grep -o 'auto -> [a-z]*' "$OUT_DIR/info.txt" 2>/dev/null || grep -o 'auto -> [a-z]*' "$OUT_DIR/info.log")"
grep -E '^  cupy' "$OUT_DIR/info.log" | sed 's/^/  /' | tee -a "$SUMMARY"

stage gpu-tests 240 python -m pytest -m gpu -q -p no:cacheprovider -x --junitxml="$OUT_DIR/gpu-tests.xml"
tail -3 "$OUT_DIR/gpu-tests.log" | sed 's/^/  /' | tee -a "$SUMMARY"

cat > "$OUT_DIR/speed.py" <<'PY'
"""Samples/s of fastnn cupy and numba (and PyTorch CUDA where installed), one process."""
import time, numpy as np, fastnn
from fastnn.datasets import digits
NETS = {"digits": ((64, 128, 64, 10), 64, 20), "784-1024-1024-10": ((784, 1024, 1024, 10), 256, 3)}
def data(net):
    if net == "digits":
        X, _, y, _ = digits(); return X, y
    rng = np.random.default_rng(0); return rng.random((8192, 784), dtype=np.float32), rng.integers(0, 10, 8192)
for net, (sizes, batch, epochs) in NETS.items():
    X, y = data(net)
    for backend in ("cupy", "numba"):
        layers = [fastnn.Linear(i, o, "relu" if k < len(sizes) - 2 else None, seed=k, backend=backend)
                  for k, (i, o) in enumerate(zip(sizes, sizes[1:]))]
        model = fastnn.Network(layers)
        args = dict(batch_size=batch, seed=0, progress=False, metrics=False)
        model.fit(X, y, "cross_entropy", fastnn.SGD(0.05), epochs=1, **args)
        started = time.perf_counter()
        h = model.fit(X, y, "cross_entropy", fastnn.SGD(0.05), epochs=epochs, **args)
        rate = len(X) * epochs / (time.perf_counter() - started)
        print(f"{net:18s} fastnn {backend:6s} {rate:12,.0f} samples/s  final loss {h['loss'][-1]:.4f}", flush=True)
    try:
        import torch
        assert torch.cuda.is_available()
    except Exception as exc:
        print(f"{net:18s} PyTorch CUDA: not available ({exc!r})"); continue
    dev = torch.device("cuda")
    mods = []
    for k, (i, o) in enumerate(zip(sizes, sizes[1:])):
        mods += [torch.nn.Linear(i, o)] + ([torch.nn.ReLU()] if k < len(sizes) - 2 else [])
    model = torch.nn.Sequential(*mods).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    Xt, yt = torch.tensor(X, device=dev), torch.tensor(y, device=dev)
    def epoch():
        order = torch.randperm(len(Xt), device=dev)
        for s in range(0, len(Xt), batch):
            idx = order[s:s + batch]
            opt.zero_grad(); torch.nn.functional.cross_entropy(model(Xt[idx]), yt[idx]).backward(); opt.step()
    epoch(); torch.cuda.synchronize(); started = time.perf_counter()
    for _ in range(epochs): epoch()
    torch.cuda.synchronize()
    print(f"{net:18s} PyTorch CUDA  {len(X) * epochs / (time.perf_counter() - started):12,.0f} samples/s", flush=True)
PY
stage speed 240 python "$OUT_DIR/speed.py"
sed 's/^/  /' "$OUT_DIR/speed.log" | tail -8 | tee -a "$SUMMARY"

if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in memcheck racecheck; do
        stage "$tool" 180 compute-sanitizer --tool "$tool" --error-exitcode 9 \
            fastnn train digits --backend cupy --epochs 1
        grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT_DIR/$tool.log" | sed 's/^/  /' | tee -a "$SUMMARY"
    done
else
    say "compute-sanitizer: not installed (part of the CUDA toolkit); memcheck and racecheck not run"
fi
say "done in ${SECONDS}s; every log is in $OUT_DIR"
