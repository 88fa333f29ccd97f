#!/usr/bin/env bash
# Real-GPU check of the agent and the guard, for a machine with an NVIDIA GPU
# (run by the `device` tool when a session is lent one; CI has no GPU and
# tests the same code against a fake NVML module).
#
# Packages the machine lacks travel as wheels in .whl/ (see
# /work/.library/device/README.md). Results go to $OUT (or ./gpu-check).
#
#   1. nvidia-smi's view of the GPUs;
#   2. the agent's discovery (NVML) as JSON, and one heartbeat's usage sample;
#   3. `apportion up` (server + real agent on SQLite), the node JSON the
#      agent registered, and a `--gpu 1` job that prints the devices it was
#      pinned to, and what CUDA (torch) sees inside the task;
#   4. the guard's local ledger capacity (GPU memory through NVML).
set -uo pipefail
OUT=${OUT:-$PWD/gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1

if [ -z "${SKIP_WHL:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1
export APPORTION_DATA_DIR=/tmp/apportion-gpu APPORTION_CONFIG=/tmp/apportion-gpu/config.toml
rm -rf /tmp/apportion-gpu
AP="python3 -m apportion.cli.main"

echo "== nvidia-smi"
nvidia-smi -L
nvidia-smi --query-gpu=index,uuid,name,memory.total,temperature.gpu,utilization.gpu,pci.bus_id \
  --format=csv

echo "== discovery (apportion.agent.discovery.discover with real NVML)"
python3 - <<'EOF' | tee "$OUT/discovery.json"
import dataclasses, json, os
from pathlib import Path
from apportion.agent.discovery import discover
d = discover(Path("/tmp/apportion-gpu/work"))
def enc(o):
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)
print(json.dumps(dataclasses.asdict(d), default=enc, indent=1))
EOF

echo "== one usage sample (what a heartbeat carries)"
python3 - <<'EOF' | tee "$OUT/usage.json"
import json
from apportion.agent.discovery import load_nvml
from apportion.agent.usage import sample_gpus
print(json.dumps(sample_gpus(load_nvml()), indent=1, default=str))
EOF

echo "== apportion up (server + real agent)"
$AP up --port 18080 > "$OUT/up.log" 2>&1 &
UP=$!
for _ in $(seq 1 120); do
  $AP nodes list --json > /dev/null 2>&1 && $AP nodes show "$(hostname)" --json > /dev/null 2>&1 && break
  kill -0 $UP 2>/dev/null || { echo "apportion up exited"; tail -30 "$OUT/up.log"; break; }
  sleep 1
done
$AP nodes show "$(hostname)" --json | tee "$OUT/node.json"
$AP nodes list

echo "== a --gpu 1 job: where was it pinned, what does CUDA see"
cat > /tmp/gpu_task.sh <<'EOF'
echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
echo "APPORTION_DEVICES=$APPORTION_DEVICES"
echo "APPORTION_ALLOCATION_ID=$APPORTION_ALLOCATION_ID"
nvidia-smi -L
python3 -c 'from apportion.guard.capacity import discover_local_capacity; print("guard inside the task:", discover_local_capacity().to_dict())'
python3 -c 'import torch; print("torch sees", torch.cuda.device_count(), "GPU:", torch.cuda.get_device_name(0)); x = torch.ones(4096, 4096, device="cuda"); print("matmul sum", float((x @ x).sum()))'
EOF
timeout 180 $AP submit --name gpu-pin --cpu 1 --memory 4Gi --gpu 1 --wait -- bash /tmp/gpu_task.sh
echo "job exit: $?"
echo "== a second --gpu 2 job on a 1-GPU node is refused with the reason"
$AP submit --name too-many --cpu 1 --memory 1Gi --gpu 2 -- true
echo "submit exit: $?"
$AP jobs list
$AP allocations list --json > "$OUT/allocations.json"
sleep 2
$AP nodes show "$(hostname)" > "$OUT/node_show.txt"; cat "$OUT/node_show.txt"

echo "== guard: local ledger capacity with real NVML"
python3 - <<'EOF' | tee "$OUT/guard.json"
import json
from apportion.guard.capacity import discover_local_capacity
c = discover_local_capacity()
print(json.dumps(c.to_dict(), indent=1, default=str))
EOF

echo "== guard on the GPU: monitor, batch helper, model cache (torch)"
python3 scripts/device_guard_check.py | tee "$OUT/guard_gpu.jsonl"

kill $UP; wait $UP
tail -20 "$OUT/up.log"
