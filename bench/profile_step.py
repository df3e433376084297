"""Where the train step's time goes, and how fast the dominant kernel can be.

  python -m bench.profile_step [--features=48] [--cpu-devices=0] \
      [--microbatches=0]
  python -m bench.profile_step --conv [--features=48]   # kernel ceiling
  taskset -c 0 python -m bench.profile_step --conv --conv-batch=16  # 1 core

Default mode: traces 3 train steps of the default model (batch 32, float32,
run as training runs it here: `bench/train.py`'s `jitted_step`)
with `jax.profiler` and sums the XLA ops' time by kind: the convolutions
(forward, and the two backward convolutions of each), matrix products (the
1x1s), and everything else (gates, bias adds, layout transposes, softmax,
optimizer). Times are summed over threads, so with 2 devices on 2 cores the
total is about twice the wall time; the shares are what matter.

--conv: the vertical-stack convolution ((k//2+1) x k, p -> 2p, 71% of the
model's FLOPs at k = 5): forward, each of its two backward convolutions
alone (input gradient, kernel gradient: the same FLOPs as the forward), and
forward+backward, in XLA (as the model runs it) and, when PyTorch is
installed, in PyTorch (oneDNN), same shapes. The ratio bounds how far the
whole step can get ahead of the reference.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = pathlib.Path(__file__).resolve().parents[1]
if not __package__:   # run as a file, its folder would shadow installed modules
  sys.exit(f'Run it as a module from the repository root: python -m '
           f'bench.{pathlib.Path(__file__).stem} ...')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

from bench import step_flags  # pylint: disable=g-import-not-at-top

_FEATURES = flags.DEFINE_integer(
    'features', 48, 'the model\'s width p (config.model.features)')
# --cpu-devices and --microbatches: bench/step_flags.py (bench.train, which
# the profile runs, uses them too).
flags.adopt_module_key_flags(step_flags)
_CONV = flags.DEFINE_bool(
    'conv', False, 'compare the vertical-stack conv kernel instead')
_CONV_BATCH = flags.DEFINE_integer(
    'conv-batch', 32, 'images per --conv call (both frameworks use the '
    'cores this process may run on: `taskset -c 0` for one core)',
    lower_bound=1)


def _best_seconds(fn, repeats=5):
  fn()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def conv_ceiling(features: int, batch: int = 32, size: int = 28) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np
  from gated_pixelcnn import layers  # pylint: disable=g-import-not-at-top

  k, p = 5, features
  r = k // 2
  rng = np.random.RandomState(0)
  x = rng.randn(batch, size, size, p).astype(np.float32)
  w = (0.05 * rng.randn(r + 1, k, p, 2 * p)).astype(np.float32)
  dy = rng.randn(batch, size, size, 2 * p).astype(np.float32)
  flops = 2 * batch * size * size * (r + 1) * k * p * 2 * p

  def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), layers.vertical_padding(k),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  forward = jax.jit(conv)
  def forward_and_backward(x, w):
    # The output too: a gradient alone would let XLA drop the forward conv
    # (the loss is linear in it), while PyTorch's backward() runs it.
    y, vjp = jax.vjp(conv, x, w)
    return y, vjp(dy)

  both = jax.jit(forward_and_backward)
  # Each backward convolution alone (its forward is not needed for it).
  input_grad = jax.jit(lambda x, w: jax.vjp(lambda x: conv(x, w), x)[1](dy))
  kernel_grad = jax.jit(lambda x, w: jax.vjp(lambda w: conv(x, w), w)[1](dy))
  rows = [('XLA', *(_best_seconds(lambda f=f: jax.block_until_ready(f(x, w)))
                    for f in (forward, input_grad, kernel_grad, both)))]
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  except ImportError:
    torch = None
  if torch is not None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_()
    tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)

    def torch_forward():
      return F.conv2d(F.pad(tx, (r, r, r, 0)), tw)

    def torch_both():
      torch_forward().backward(tdy)

    tx_padded = F.pad(tx.detach(), (r, r, r, 0))
    with torch.no_grad():
      torch_times = [_best_seconds(f) for f in (
          torch_forward,
          lambda: torch.nn.grad.conv2d_input(tx_padded.shape, tw, tdy),
          lambda: torch.nn.grad.conv2d_weight(tx_padded, tw.shape, tdy))]
    rows.append((f'PyTorch {torch.__version__}', *torch_times,
                 _best_seconds(torch_both)))
  print(f'Vertical conv {r + 1}x{k}, {p} -> {2 * p}, batch {batch}, '
        f'{size}x{size}, float32, best of 5:')
  print('| kernel | forward ms | GFLOP/s | input grad ms | kernel grad ms | '
        'forward+backward ms | GFLOP/s |')
  print('|---|---|---|---|---|---|---|')
  for name, fwd, dx, dw, fb in rows:
    print(f'| {name} | {1e3 * fwd:.1f} | {flops / fwd / 1e9:.0f} | '
          f'{1e3 * dx:.1f} | {1e3 * dw:.1f} | '
          f'{1e3 * fb:.1f} | {3 * flops / fb / 1e9:.0f} |')


def _kind(body: list[str]) -> str:
  text = '\n'.join(body)
  if ' convolution(' in text:
    return 'convolution'
  if ' dot(' in text:
    return 'dot (1x1s, head)'
  if ' transpose(' in text:
    return 'layout transposes'
  if ' tanh(' in text or ' exponential(' in text or ' divide(' in text:
    return 'gates, softmax (tanh, exp)'
  return 'other elementwise (adds, pads, optimizer)'


def profile(features: int, cpu_devices: int, microbatches: int,
            steps: int = 3) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from bench import train as bench_train  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.cpu_devices = cpu_devices
  config.microbatches = microbatches
  config.model.features = features
  images = np.random.RandomState(0).randint(
      0, 256, (config.batch_size, 28, 28, 1)).astype(np.uint8)
  step, state, batch, devices, parts = bench_train.jitted_step(config, images)
  import jax  # pylint: disable=g-import-not-at-top

  compiled = step.lower(state, batch).compile()
  hlo = compiled.as_text()
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)

  with tempfile.TemporaryDirectory() as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(steps):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    wall = (time.perf_counter() - start) / steps
    path = glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)[0]
    with gzip.open(path) as f:
      events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events

  # Fusion instruction -> the computation it calls -> that body's ops.
  calls, bodies, current = {}, {}, None
  for line in hlo.splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .* (?:fusion|custom-call)\(.*'
                 r'calls=%?([\w.\-]+)', line)
    if m:
      calls[m.group(1)] = m.group(2)
    header = re.match(r'%?([\w.\-]+) .*\{$', line) if line[:1] not in (
        ' ', '') else None
    if header:
      current = header.group(1)
      bodies[current] = []
    elif current:
      bodies[current].append(line)
  per_kind = collections.Counter()
  for e in events:
    if e.get('ph') != 'X' or e['name'] not in calls and not re.match(
        r'^(wrapped_|copy|transpose|dot|convolution)', e['name']):
      continue
    body = bodies.get(calls.get(e['name']), [f' {e["name"]}('])
    per_kind[_kind(body)] += e['dur'] / 1e3 / steps
  total = sum(per_kind.values())
  print(f'Train step, default model at p = {features}, batch 32, float32, '
        f'{devices} CPU device(s), {parts} part(s): {1e3 * wall:.0f} ms wall '
        f'per step '
        f'(traced); XLA op time summed over threads {total:.0f} ms')
  print('| kind | ms per step | share |')
  print('|---|---|---|')
  for kind, ms in per_kind.most_common():
    print(f'| {kind} | {ms:.0f} | {100 * ms / total:.0f}% |')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if _CONV.value:
    conv_ceiling(_FEATURES.value, _CONV_BATCH.value)
  else:
    profile(_FEATURES.value, step_flags.CPU_DEVICES.value,
            step_flags.MICROBATCHES.value)


if __name__ == '__main__':
  app.run(main)
