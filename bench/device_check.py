"""One command that checks and measures an accelerator: what it is, whether
the guarantees hold on it, how fast it trains and samples.

  python -m bench.device_check --out=/tmp/device_check   # a GPU/TPU: ~8 min
  python -m bench.device_check --tiny                    # any CPU: ~1 min

Prints a table and writes OUT/device_check.json:

* the devices, JAX/jaxlib and platform (CUDA) versions, the device's peak
  bfloat16/float32 FLOP/s (a table of known devices) next to a measured
  large matmul;
* correctness on the device: exact causality of a small RGB Gated PixelCNN
  (every sub-pixel moved in turn, logits compared bit for bit, one batch-1
  program), cached == naive samples for the same key, and a compression
  round trip of 64 images;
* training throughput of the paper-size CIFAR-10 model (configs/cifar10.py)
  in bfloat16 and float32, and of the default model: images/s, TFLOP/s from
  the cost model (gated_pixelcnn.cost), percent of peak (MFU), peak device
  memory, compile time;
* cached sampling of 32x32x3 images with the paper-size model at batch 1,
  16 and 256: seconds per image, and the naive sampler's time at batch 16
  (timed over --naive_steps sub-pixels and scaled to a whole image).

--tiny runs the same code paths with tiny models, images and batches on
any machine (the test suite runs it on the CPU). Exit status 1 if a
correctness check fails.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if not __package__:   # run as a file, its folder would shadow installed modules
  sys.exit(f'Run it as a module from the repository root: python -m '
           f'bench.{pathlib.Path(__file__).stem} ...')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

_OUT = flags.DEFINE_string('out', '.', 'folder for device_check.json')
_TINY = flags.DEFINE_bool(
    'tiny', False, 'tiny models, images and batches: the same code paths in '
    'about a minute on a CPU')
_STEPS = flags.DEFINE_integer('steps', 10, 'timed training steps per model')
_NAIVE_STEPS = flags.DEFINE_integer(
    'naive_steps', 48, 'sub-pixels the naive sampler is timed over (scaled '
    'to the H*W*C of a whole image)')

# Dense peak FLOP/s of one device (chip) from the vendors' data sheets:
# (device_kind prefix, bfloat16, float32). float32 is the non-tensor-core
# rate on GPUs (the samplers and the coder multiply in full float32).
PEAKS = (
    ('NVIDIA H200', 989e12, 67e12),
    ('NVIDIA H100 PCIe', 756e12, 51e12),
    ('NVIDIA H100', 989e12, 67e12),
    ('NVIDIA A100', 312e12, 19.5e12),
    ('NVIDIA L4', 121e12, 30e12),
    ('TPU v4', 275e12, None),
    ('TPU v5 lite', 197e12, None),
    ('TPU v5', 459e12, None),
    ('TPU v6 lite', 918e12, None),
)


def _block(x):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.block_until_ready(x)


def environment() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  try:
    from jax.extend import backend  # pylint: disable=g-import-not-at-top
    platform_version = backend.get_backend().platform_version
  except Exception:  # pylint: disable=broad-except
    platform_version = 'unknown'
  cpu = platform.processor() or platform.machine()
  return {'platform': devices[0].platform,
          'device_kind': devices[0].device_kind,
          'num_devices': len(devices), 'devices': [str(d) for d in devices],
          'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'platform_version': platform_version,
          'host': f'{platform.node()}, {cpu}, {os.cpu_count()} CPUs',
          'date': time.strftime('%Y-%m-%d %H:%M %Z')}


def peaks(kind: str, tiny: bool) -> dict:
  """Known peak FLOP/s per device, and measured matmul FLOP/s."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  known = next(((bf16, f32) for prefix, bf16, f32 in PEAKS
                if kind.startswith(prefix)), (None, None))
  n = 512 if tiny else 8192
  measured = {}
  for name, dtype in (('bfloat16', jnp.bfloat16), ('float32', jnp.float32)):
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    with jax.default_matmul_precision('highest'):
      f = jax.jit(lambda x, y: x @ y)
      _block(f(a, a))
      best = float('inf')
      for _ in range(5):
        start = time.perf_counter()
        _block(f(a, a))
        best = min(best, time.perf_counter() - start)
    measured[name] = 2 * n**3 / best
  return {'known_bf16': known[0], 'known_f32': known[1],
          'measured_bf16': measured['bfloat16'],
          'measured_f32': measured['float32'], 'matmul_size': n}


# ------------------------------------------------------------ correctness


def check_causality(tiny: bool) -> dict:
  """Exact: no logit depends on its own or a later sub-pixel, and every
  sub-pixel of the receptive field does change it."""
  from gated_pixelcnn import influence  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import models  # pylint: disable=g-import-not-at-top
  H, W, C = (3, 4, 3) if tiny else (6, 6, 3)
  L, k = 2, 3
  model = models.GatedPixelCNN(num_layers=L, features=12, kernel_size=k,
                               first_kernel_size=k, num_channels=C,
                               head_features=12)
  changed = influence.influence(model, H, W, C)
  earlier = influence.causal_order(H, W, C)
  field = influence.gated_receptive_field(H, W, C, L, k, k) & earlier
  leaks, blind = int((changed & ~earlier).sum()), int((field & ~changed).sum())
  return {'passed': leaks == 0 and blind == 0, 'image': [H, W, C],
          'pairs': int(changed.size), 'leaks': leaks, 'blind_spots': blind}


def _small_model(tiny: bool):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import models  # pylint: disable=g-import-not-at-top
  shape = (4, 4, 3) if tiny else (8, 8, 3)
  model = models.GatedPixelCNN(num_layers=3, features=24, kernel_size=3,
                               first_kernel_size=5, num_channels=3,
                               head_features=24)
  variables = model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, *shape), jnp.int32))
  # Sharper than at init, so that samples depend on their context.
  variables = jax.tree_util.tree_map(lambda x: 3.0 * x, variables)
  return model, variables, shape


def check_samplers(tiny: bool) -> dict:
  """The cached and the naive sampler draw the same images for one key."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import sampling  # pylint: disable=g-import-not-at-top
  model, variables, shape = _small_model(tiny)
  images = {
      method: np.asarray(sampling.sample(
          model, variables, jax.random.PRNGKey(1), num_samples=8,
          image_shape=shape, method=method))
      for method in sampling.METHODS}
  differ = int((images['naive'] != images['cached']).sum())
  return {'passed': differ == 0, 'sub_pixels': int(images['naive'].size),
          'differing': differ}


def check_compression(tiny: bool) -> dict:
  """64 images round-trip exactly, in about the model's NLL."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import compression  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import likelihood  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import sampling  # pylint: disable=g-import-not-at-top
  model, variables, shape = _small_model(tiny)
  images = np.asarray(sampling.sample(model, variables, jax.random.PRNGKey(2),
                                      num_samples=64, image_shape=shape))
  codec = compression.Codec(model, variables['params'], image_shape=shape,
                            step=0, batch_size=64)
  start = time.perf_counter()
  data = codec.compress(images)
  encode = time.perf_counter() - start
  start = time.perf_counter()
  decoded, _ = codec.decompress(data)
  decode = time.perf_counter() - start
  with jax.default_matmul_precision('highest'):
    nll = float(likelihood.bits_per_dim(model.apply(variables, images),
                                        images).mean())
  return {'passed': bool(np.array_equal(decoded, images)),
          'images': 64, 'image': list(shape),
          'file_bits_per_dim': 8 * len(data) / images.size,
          'model_bits_per_dim': nll, 'encode_seconds': encode,
          'decode_seconds': decode}


# ---------------------------------------------------------------- speed


def _train_configs(tiny: bool) -> list[tuple[str, object]]:
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  out = []
  for dtype in ('bfloat16', 'float32'):
    config = cifar10.get_config()
    config.model.dtype = dtype
    out.append((f'cifar10 paper model, {dtype}', config))
  out.append(('default model, float32', default.get_config()))
  if tiny:
    for _, config in out:
      config.model.num_layers = 2
      config.model.features = 12 if config.model.num_channels == 3 else 8
      config.model.head_features = 12
      config.batch_size = 4
      config.eval_batch_size = 4
  for _, config in out:
    config.microbatches = 1
  return out


def _peak_memory(device) -> int | None:
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    return None
  return stats.get('peak_bytes_in_use')


def measure_training(name: str, config, steps: int, peak: dict) -> dict:
  """The Trainer's real step on random images: compile, then ``steps``."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import cost  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import train  # pylint: disable=g-import-not-at-top
  trainer = train.Trainer(config)
  shape = trainer.spec.image_shape
  rng = np.random.default_rng(0)
  local = config.batch_size // jax.process_count()
  batch = trainer.global_batch(
      {'image': rng.integers(0, 256, (local, *shape), dtype=np.uint8)})
  state = trainer.init(jax.random.PRNGKey(0))
  start = time.perf_counter()
  state, metrics = trainer.train_step(state, batch)
  _block(metrics)
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.train_step(state, batch)
  _block(metrics)
  seconds = (time.perf_counter() - start) / steps
  images_per_second = config.batch_size / seconds
  flops = cost.flops_per_image(config.model, shape)['train']
  achieved = images_per_second * flops
  dtype = config.model.dtype
  known = peak['known_bf16' if dtype == 'bfloat16' else 'known_f32']
  reference = known or peak['measured_bf16' if dtype == 'bfloat16'
                            else 'measured_f32']
  devices = trainer.mesh.size
  return {'name': name, 'dtype': dtype, 'image': list(shape),
          'params': int(sum(x.size for x in
                            jax.tree_util.tree_leaves(state.params))),
          'batch': config.batch_size, 'devices': devices,
          'step_seconds': seconds, 'images_per_second': images_per_second,
          'tflops': achieved / 1e12,
          'mfu': achieved / (devices * reference),
          'mfu_of': 'known peak' if known else 'measured matmul',
          'peak_memory_bytes': _peak_memory(trainer.mesh.devices.flat[0]),
          'compile_seconds': compile_seconds,
          'loss': float(metrics[trainer.metric])}


def measure_sampling(tiny: bool, naive_steps: int) -> dict:
  """Cached sampling at several batch sizes; the naive sampler at one."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import models  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import sampling  # pylint: disable=g-import-not-at-top
  config = cifar10.get_config().model
  shape, batches, naive_batch = (32, 32, 3), (1, 16, 256), 16
  if tiny:
    config.num_layers, config.features, config.head_features = 2, 12, 12
    shape, batches, naive_batch = (6, 6, 3), (1, 2, 4), 2
  model = models.create_model(config)
  variables = model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, *shape), jnp.int32))
  H, W, C = shape
  rows = []
  for batch in batches:
    def run(key, batch=batch):
      return sampling.sample(model, variables, key, num_samples=batch,
                             image_shape=shape)
    start = time.perf_counter()
    _block(run(jax.random.PRNGKey(0)))
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _block(run(jax.random.PRNGKey(1)))
    seconds = time.perf_counter() - start
    rows.append({'method': 'cached', 'batch': batch, 'seconds': seconds,
                 'seconds_per_image': seconds / batch,
                 'first_call_seconds': compile_seconds})
  # The naive sampler's loop steps all cost the same: time the last
  # `naive_steps` sub-pixels (a completion) and scale to the whole image.
  total = H * W * C
  k = min(naive_steps, total)
  canvas = jnp.zeros((naive_batch, *shape), jnp.int32)

  def complete(key):
    return sampling.complete(model, variables, key, canvas, total - k,
                             method='naive')

  _block(complete(jax.random.PRNGKey(0)))
  start = time.perf_counter()
  _block(complete(jax.random.PRNGKey(1)))
  seconds = (time.perf_counter() - start) * total / k
  rows.append({'method': 'naive', 'batch': naive_batch, 'seconds': seconds,
               'seconds_per_image': seconds / naive_batch,
               'timed_sub_pixels': k, 'scaled_to': total})
  cached = next(r for r in rows if r['method'] == 'cached'
                and r['batch'] == naive_batch)
  return {'image': list(shape), 'params': int(sum(
      x.size for x in jax.tree_util.tree_leaves(variables))),
          'rows': rows, 'naive_over_cached': seconds / cached['seconds']}


# ---------------------------------------------------------------- report


def _g(x, unit=1.0, digits=3) -> str:
  return '-' if x is None else f'{x / unit:.{digits}g}'


def report(result: dict) -> str:
  env, peak = result['environment'], result['peak']
  lines = [
      f'# device check, {env["date"]}',
      f'{env["num_devices"]} x {env["device_kind"]} ({env["platform"]}, '
      f'{env["platform_version"]}), JAX {env["jax"]}, jaxlib '
      f'{env["jaxlib"]}; host {env["host"]}',
      '',
      '| peak TFLOP/s per device | bfloat16 | float32 |',
      '|---|---:|---:|',
      f'| data sheet | {_g(peak["known_bf16"], 1e12)} | '
      f'{_g(peak["known_f32"], 1e12)} |',
      f'| measured ({peak["matmul_size"]}^2 matmul) | '
      f'{_g(peak["measured_bf16"], 1e12)} | '
      f'{_g(peak["measured_f32"], 1e12)} |',
      '',
      '| check | result | detail |',
      '|---|---|---|']
  checks = result['checks']
  c = checks['causality']
  lines.append(f'| exact causality, {"x".join(map(str, c["image"]))} RGB | '
               f'{"pass" if c["passed"] else "FAIL"} | {c["leaks"]} leaks, '
               f'{c["blind_spots"]} blind spots in {c["pairs"]} pairs |')
  s = checks['samplers']
  lines.append(f'| cached == naive samples | '
               f'{"pass" if s["passed"] else "FAIL"} | {s["differing"]} of '
               f'{s["sub_pixels"]} sub-pixels differ |')
  z = checks['compression']
  lines.append(f'| compression round trip, {z["images"]} images | '
               f'{"pass" if z["passed"] else "FAIL"} | '
               f'{z["file_bits_per_dim"]:.4f} bits/dim in the file, model '
               f'{z["model_bits_per_dim"]:.4f} |')
  lines += ['', '| training | image | batch | devices | images/s | TFLOP/s '
            '| MFU | peak memory | compile |',
            '|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for t in result['training']:
    memory = t['peak_memory_bytes']
    lines.append(
        f'| {t["name"]} ({t["params"] / 1e6:.2f}M params) | '
        f'{"x".join(map(str, t["image"]))} | {t["batch"]} | {t["devices"]} | '
        f'{t["images_per_second"]:.1f} | {t["tflops"]:.3g} | '
        f'{100 * t["mfu"]:.1f}% ({t["mfu_of"]}) | '
        f'{"-" if memory is None else f"{memory / 2**30:.1f} GiB"} | '
        f'{t["compile_seconds"]:.1f} s |')
  sm = result['sampling']
  lines += ['', f'| sampling {"x".join(map(str, sm["image"]))} '
            f'({sm["params"] / 1e6:.2f}M params) | batch | seconds | '
            'seconds/image |', '|---|---:|---:|---:|']
  for r in sm['rows']:
    note = (f' (timed over {r["timed_sub_pixels"]} sub-pixels)'
            if r['method'] == 'naive' else '')
    lines.append(f'| {r["method"]}{note} | {r["batch"]} | '
                 f'{r["seconds"]:.3g} | {r["seconds_per_image"]:.3g} |')
  lines.append(f'\nnaive / cached at the same batch: '
               f'{sm["naive_over_cached"]:.1f}x')
  return '\n'.join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  tiny = _TINY.value
  env = environment()
  print(f'{env["num_devices"]} x {env["device_kind"]} ({env["platform"]})',
        flush=True)
  result = {'environment': env, 'tiny': tiny,
            'peak': peaks(env['device_kind'], tiny), 'checks': {}}
  for name, check in (('causality', check_causality),
                      ('samplers', check_samplers),
                      ('compression', check_compression)):
    start = time.perf_counter()
    result['checks'][name] = check(tiny)
    print(f'{name}: {"pass" if result["checks"][name]["passed"] else "FAIL"}'
          f' ({time.perf_counter() - start:.1f} s)', flush=True)
  result['training'] = []
  for name, config in _train_configs(tiny):
    row = measure_training(name, config, 2 if tiny else _STEPS.value,
                           result['peak'])
    result['training'].append(row)
    print(f'{name}: {row["images_per_second"]:.1f} images/s', flush=True)
  result['sampling'] = measure_sampling(
      tiny, 8 if tiny else _NAIVE_STEPS.value)
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'device_check.json').write_text(json.dumps(result, indent=1) + '\n')
  print(report(result))
  print(f'\nwritten to {out / "device_check.json"}')
  if not all(c['passed'] for c in result['checks'].values()):
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
