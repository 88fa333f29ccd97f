#!/usr/bin/env bash
# Real-GPU check of the GPU fence (issue 17), for a machine with an NVIDIA GPU,
# run as root (the `device` tool runs commands as root). CI has no GPU and
# checks the same code on fake /dev/nvidiaN nodes (tests/agent/test_gpu_isolation.py).
#
# For each mode, one agent (--gpu-isolation MODE, tasks as nobody) and two jobs:
#   widen: granted no GPU, it sets CUDA_VISIBLE_DEVICES=0 itself; with
#          cgroup_devices or mount_namespace, nvidia-smi and CUDA must see no
#          GPU; with env_only they see it (the hole that mode reports);
#   own:   granted --gpu 1, it must see exactly that GPU and compute on it.
# Results go to $OUT (or ./gpu-isolation-check): log.txt, summary.txt and each
# node's JSON. Packages the machine lacks travel as wheels in .whl/, as for
# scripts/device_gpu_check.sh. A dry run without a GPU: AGENT_EXTRA="--resources
# cpu=2,memory=8Gi,gpu=1" (the jobs then find no nvidia-smi or torch).
set -uo pipefail
OUT=${OUT:-$PWD/gpu-isolation-check}
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
ROOT=/tmp/apportion-iso
rm -rf "$ROOT"; mkdir -p "$ROOT"; chmod 755 "$ROOT"
export APPORTION_DATA_DIR=$ROOT/server APPORTION_CONFIG=$ROOT/config.toml
AP="python3 -m apportion.cli.main"
PORT=18090
ADMIN=$(python3 -c 'import secrets; print("admin-" + secrets.token_hex(16))')

nvidia-smi -L
ls -l /dev/nvidia*

APPORTION_ADMIN_TOKEN=$ADMIN $AP server --port $PORT > "$OUT/server.log" 2>&1 &
SERVER=$!
export APPORTION_SERVER=http://127.0.0.1:$PORT APPORTION_TOKEN=$ADMIN
for _ in $(seq 1 60); do curl -sf "$APPORTION_SERVER/healthz" >/dev/null && break; sleep 1; done

cat > "$ROOT/widen.sh" <<'EOF'
export CUDA_VISIBLE_DEVICES=0
echo "uid=$(id -u) granted=$APPORTION_DEVICES"
ls /dev/nvidia* 2>&1 | tr '\n' ' '; echo
nvidia-smi -L; echo "smi_rc=$?"
python3 -c 'import torch; print("torch_gpus", torch.cuda.device_count())' 2>&1 | tail -1
EOF
cat > "$ROOT/own.sh" <<'EOF'
echo "uid=$(id -u) CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
nvidia-smi -L; echo "smi_rc=$?"
python3 -c 'import torch; print("torch_gpus", torch.cuda.device_count()); x = torch.ones(2048, 2048, device="cuda"); print("matmul", float((x @ x).sum()))' 2>&1 | tail -2
EOF
chmod 644 "$ROOT"/*.sh

for MODE in cgroup_devices mount_namespace env_only; do
  echo "== $MODE"
  NODE=gpu-$MODE
  $AP token create --name "$NODE" --role agent --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' > "$ROOT/$NODE.token"
  chmod 600 "$ROOT/$NODE.token"
  env -u APPORTION_TOKEN $AP agent --token-file "$ROOT/$NODE.token" --name "$NODE" \
    --gpu-isolation "$MODE" --task-user nobody --work-dir "$ROOT/work-$MODE" \
    --sandbox-dir "$ROOT/sandbox-$MODE" --heartbeat 1 --on-exit stop ${AGENT_EXTRA:-} \
    > "$OUT/agent-$MODE.log" 2>&1 &
  AGENT=$!
  for _ in $(seq 1 60); do
    $AP nodes show "$NODE" --json > "$OUT/node-$MODE.json" 2>/dev/null && break; sleep 1
  done
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["specs"]; print("isolation:", s.get("isolation")); print("gpu_isolation:", s.get("gpu_isolation"))' "$OUT/node-$MODE.json"
  W=$(timeout 180 $AP submit --name "widen-$MODE" --cpu 1 --memory 4Gi --wait -- sh "$ROOT/widen.sh")
  echo "$W"
  O=$(timeout 180 $AP submit --name "own-$MODE" --cpu 1 --memory 4Gi --gpu 1 --wait -- sh "$ROOT/own.sh")
  echo "$O"
  echo "$MODE widen: $(echo "$W" | grep -E 'smi_rc|torch_gpus' | tr '\n' ' ') own: $(echo "$O" | grep -E 'smi_rc|torch_gpus' | tr '\n' ' ')" >> "$OUT/summary.txt"
  kill "$AGENT"; wait "$AGENT"
done

echo "== summary (expected: widen sees 0 GPUs except with env_only; own sees 1)"
cat "$OUT/summary.txt"
kill $SERVER; wait $SERVER 2>/dev/null || true
