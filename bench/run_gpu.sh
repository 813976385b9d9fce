#!/usr/bin/env bash
# The speed benchmark on a GPU machine, as run for the README (torch and JAX; TF only where a
# GPU TensorFlow is installed). Results go to $OUT (default bench/results). If a folder .whl
# with wheels exists (e.g. array-api-compat for a machine without it), they are installed
# into /tmp/site first. Each framework runs in its own process under a time limit.
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
REPEATS=${REPEATS:-30}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import sys, torch, jax, flax, optax; print(sys.version.split()[0], 'torch', torch.__version__, 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
  timeout 170 python3 -m bench.speed --framework torch --device gpu --repeats "$REPEATS" --warmup 3 --suite speed,memory,scaling --batches 16,32,64,128,256 \
    --out "$OUT/speed_gpu_torch.md" --out "$OUT/speed_gpu_torch.json"
  timeout 240 python3 -m bench.speed --framework jax --device gpu --repeats "$REPEATS" --warmup 3 --suite speed,memory \
    --out "$OUT/speed_gpu_jax.md" --out "$OUT/speed_gpu_jax.json"
  if python3 -c "import tensorflow as tf; assert tf.config.list_physical_devices('GPU')" 2>/dev/null; then
    timeout 240 python3 -m bench.speed --framework tf --device gpu --repeats "$REPEATS" --warmup 3 --suite speed,memory \
      --out "$OUT/speed_gpu_tf.md" --out "$OUT/speed_gpu_tf.json"
  else
    echo "no GPU TensorFlow here: tf skipped"
  fi
  timeout 200 python3 -m bench.speed --framework jax --device gpu --repeats "$REPEATS" --warmup 3 --suite scaling --batches 16,32,64,128,256 \
    --out "$OUT/speed_gpu_jax_scaling.md"
} 2>&1 | tee "$OUT/gpu_log.txt"
