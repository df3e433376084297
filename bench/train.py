"""Throughput, FLOP/s, memory and compile time of the jitted train step.

  python -m bench.train                    # the three models below, JAX only
  python -m bench.train --compare-torch    # + the PyTorch reference, ratio
  python -m bench.train --scaling          # default model at 16, 32, 64 px
  python -m bench.train --models=default --steps=30 --dtype=bfloat16
  python -m bench.train --models=default --conv-impls=conv,im2col,taps
  python -m bench.train --compare-torch --max-isa=AVX   # as on an AVX-only CPU

Models (configs/default.py's architecture unless said): ``default`` (8 layers,
p = 48, 28x28x1), ``wide`` (the same at p = 128), ``rgb32`` (the same at
32x32x3), and on request ``deep`` (15 layers, p = 64, 28x28x1). Every
measurement runs in a fresh subprocess so that its peak
resident memory (RSS) is its own. The step is the real `steps.train_step`
(RMSProp, as the PyTorch reference's) on one fixed random batch, jitted
with its state donated; timing starts after compilation and --warmup steps,
covers --windows windows of --steps steps each (blocking once per window,
as training does) and reports the median window. FLOPs are analytic (the
cost model of `gated_pixelcnn.cost`); "% of matmul" divides the
achieved FLOP/s by this machine's float32 matmul rate measured in the same
run (a 2048^2 XLA matmul, best of 10). The JAX step runs as training runs it
on this host: over config.cpu_devices (one per core) and in
config.microbatches parts (auto); --cpu-devices=1 --microbatches=1 gives the
plain one-device step. --conv-impls times the step with each way of
computing the convolutions (layers.CONV_IMPLS; what config.conv_impl='auto'
chooses from). --max-isa=AVX limits both frameworks to a CPU's older
vector extensions (XLA's xla_cpu_max_isa; oneDNN's, MKL's and ATen's
dispatch), to see on one machine what a CPU without AVX2/AVX-512 gets; a
real CPU of that kind also differs in cache and core, so name the CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = pathlib.Path(__file__).resolve().parents[1]
if not __package__:   # run as a file, its folder would shadow installed modules
  sys.exit(f'Run it as a module from the repository root: python -m '
           f'bench.{pathlib.Path(__file__).stem} ...')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

from bench import step_flags  # pylint: disable=g-import-not-at-top

MODELS = {
    'default': dict(features=48, image_shape=(28, 28, 1)),
    'wide': dict(features=128, image_shape=(28, 28, 1)),
    'rgb32': dict(features=48, image_shape=(32, 32, 3)),
    # Deeper and wider: where XLA's convolution was found slower than
    # PyTorch's on a CPU with AVX but no AVX2.
    'deep': dict(features=64, num_layers=15, image_shape=(28, 28, 1)),
}
SCALING_SIZES = (16, 32, 64)

_MODELS = flags.DEFINE_string('models', 'default,wide,rgb32',
                              f'comma-separated subset of {sorted(MODELS)}')
_COMPARE_TORCH = flags.DEFINE_bool(
    'compare-torch', False, 'also time the PyTorch reference (bench extra)')
_SCALING = flags.DEFINE_bool(
    'scaling', False, f'default model at {SCALING_SIZES} px instead')
_BATCH = flags.DEFINE_integer('batch', 32, 'images per train step')
_STEPS = flags.DEFINE_integer('steps', 5, 'steps per timed window',
                              lower_bound=1)
_WINDOWS = flags.DEFINE_integer(
    'windows', 3, 'timed windows (the median window is reported)',
    lower_bound=1)
_WARMUP = flags.DEFINE_integer(
    'warmup', 2, 'steps run before timing starts (after compilation)',
    lower_bound=0)
# --cpu-devices and --microbatches: bench/step_flags.py (bench.profile_step,
# which imports this module, uses them too).
flags.adopt_module_key_flags(step_flags)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'compute dtype of the model (config.model.dtype)')
_CONV_IMPLS = flags.DEFINE_list(
    'conv-impls', ['conv'], 'ways to compute the convolutions to time, from '
    "layers.CONV_IMPLS ('conv', 'im2col', 'taps')")
# The instruction-set limits each framework's own switch understands.
MAX_ISA = {
    'AVX': dict(xla='AVX', onednn='AVX', mkl='AVX', aten='default'),
    'AVX2': dict(xla='AVX2', onednn='AVX2', mkl='AVX2', aten='avx2'),
}
_MAX_ISA = flags.DEFINE_enum(
    'max-isa', None, sorted(MAX_ISA), 'use no CPU vector extension newer '
    'than this (both frameworks; see the module doc)')
_CHILD = flags.DEFINE_string(
    'child', None, 'internal: one measurement, as JSON of framework, '
    'features and image_shape (the subprocess each measurement runs in)')


@flags.validator('conv-impls', 'unknown --conv-impls; choose from conv, '
                 'im2col, taps')
def _known_conv_impls(values) -> bool:
  return bool(values) and set(values) <= {'conv', 'im2col', 'taps'}


def isa_environment(isa: str | None) -> dict[str, str]:
  """The environment variables that cap JAX's and PyTorch's CPU code at
  ``isa`` (None: no cap)."""
  if isa is None:
    return {}
  limits = MAX_ISA[isa]
  xla_flags = os.environ.get('XLA_FLAGS', '')
  return {'XLA_FLAGS': f"{xla_flags} --xla_cpu_max_isa={limits['xla']}",
          'ONEDNN_MAX_CPU_ISA': limits['onednn'],
          'MKL_ENABLE_INSTRUCTIONS': limits['mkl'],
          'ATEN_CPU_CAPABILITY': limits['aten']}


@flags.multi_flags_validator(['models', 'scaling'])
def _known_models(values) -> bool:
  if values['scaling']:
    return True   # --models is not used
  unknown = set(values['models'].split(',')) - set(MODELS)
  if unknown:
    raise flags.ValidationError(f'unknown --models {sorted(unknown)}; choose '
                                f'from {sorted(MODELS)}')
  return True


@dataclasses.dataclass(frozen=True)
class Settings:
  """How each measurement runs: the flags, passed on to each child."""
  batch: int
  steps: int
  windows: int
  warmup: int
  cpu_devices: int
  microbatches: int
  dtype: str

  @classmethod
  def from_flags(cls) -> Settings:
    return cls(batch=_BATCH.value, steps=_STEPS.value,
               windows=_WINDOWS.value, warmup=_WARMUP.value,
               cpu_devices=step_flags.CPU_DEVICES.value,
               microbatches=step_flags.MICROBATCHES.value,
               dtype=_DTYPE.value)

  def argv(self) -> list[str]:
    """The flags that give these settings."""
    return [f'--batch={self.batch}', f'--steps={self.steps}',
            f'--windows={self.windows}', f'--warmup={self.warmup}',
            f'--dtype={self.dtype}', f'--cpu-devices={self.cpu_devices}',
            f'--microbatches={self.microbatches}']


def model_config(features, num_channels, dtype='float32', num_layers=None):
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_model_config()
  config.features = features
  config.num_layers = num_layers or config.num_layers
  config.num_channels = num_channels
  config.head_features -= config.head_features % num_channels
  config.dtype = dtype
  return config


def _images(batch, image_shape):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.random.RandomState(0).randint(
      0, 256, (batch, *image_shape)).astype(np.uint8)


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_windows(run_steps, warmup, steps, windows) -> float:
  """Median seconds per step over `windows` windows of `steps` steps."""
  if warmup:
    run_steps(warmup)
  per_step = []
  for _ in range(windows):
    start = time.perf_counter()
    run_steps(steps)
    per_step.append((time.perf_counter() - start) / steps)
  return statistics.median(per_step)


def jitted_step(config, images):
  """The train step as the Trainer runs it on a CPU host, for benchmarks.

  Sets the CPU device count from ``config.cpu_devices`` (so it must run
  before JAX's backends start) and returns (step, state, batch, devices,
  microbatches): the batch split over a `data` mesh, the state replicated
  and donated, ``config.microbatches`` resolved as training resolves it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import optim  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import parallel  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import steps  # pylint: disable=g-import-not-at-top

  devices = parallel.cpu_device_count(config, parallel.num_cores())
  jax.config.update('jax_num_cpu_devices', devices)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import models  # pylint: disable=g-import-not-at-top

  microbatches = parallel.num_microbatches(config, devices,
                                           images.shape[1:], 'cpu')
  impl = config.get('conv_impl', 'conv')
  model = models.create_model(config.model,
                              conv_impl='conv' if impl == 'auto' else impl)
  tx, schedule = optim.create_optimizer(config)
  mesh = parallel.make_mesh()
  replicated = jax.sharding.NamedSharding(mesh, parallel.P())
  split = jax.sharding.NamedSharding(mesh, parallel.P('data'))
  params = model.init(jax.random.PRNGKey(0), jnp.asarray(images[:1]))['params']
  state = jax.device_put(steps.TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state=tx.init(params), ema_params=None, rng=jax.random.PRNGKey(1)),
                         replicated)
  batch = {'image': jax.device_put(images, split)}
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx,
                                   schedule=schedule, ema_decay=0.0,
                                   microbatches=microbatches),
                 in_shardings=(replicated, split),
                 out_shardings=(replicated, replicated), donate_argnums=0)
  return step, state, batch, devices, microbatches


def measure_jax(settings: Settings, features, image_shape,
                conv_impl: str = 'conv', num_layers: int | None = None
                ) -> dict:
  """One JAX measurement (run in its own process)."""
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.rmsprop(default.get_config())
  config.conv_impl = conv_impl
  config.batch_size = settings.batch
  config.cpu_devices = settings.cpu_devices
  config.microbatches = settings.microbatches
  config.model = model_config(features, image_shape[-1], settings.dtype,
                              num_layers)
  step, state, batch, devices, microbatches = jitted_step(
      config, _images(settings.batch, image_shape))
  import jax  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import cost  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  # XLA's scratch buffers (activations kept for the backward pass), per
  # device program, summed over the devices.
  temp_mib = devices * getattr(memory, 'temp_size_in_bytes', 0) / 2**20

  holder = {'state': state}

  def run_steps(n):
    s = holder['state']
    for _ in range(n):
      s, metrics = compiled(s, batch)
    jax.block_until_ready(metrics)
    holder['state'] = s

  seconds = _timed_windows(run_steps, settings.warmup, settings.steps,
                           settings.windows)
  return dict(
      framework=(f'jax {conv_impl}, {devices} '
                 f'{jax.devices()[0].platform.upper()} device'
                 f'{"s" if devices > 1 else ""}, {microbatches} '
                 f'part{"s" if microbatches > 1 else ""}'),
      seconds_per_step=seconds, compile_s=compile_s,
      peak_rss_mib=_peak_rss_mib(), xla_temp_mib=temp_mib,
      params=sum(x.size for x in jax.tree_util.tree_leaves(state.params)),
      flops=cost.flops_per_image(config.model, image_shape),
      matmul_gflops=cost.measured_matmul_gflops())


def measure_torch(settings: Settings, features, image_shape,
                  num_layers: int | None = None) -> dict:
  """The PyTorch reference, timed the same way (run in its own process)."""
  import torch  # pylint: disable=g-import-not-at-top
  from bench import torch_reference  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import cost  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  config = default.get_config()
  config.model = model_config(features, image_shape[-1],
                              num_layers=num_layers)
  model = torch_reference.channels_last(
      torch_reference.from_config(config.model))
  optimizer = torch.optim.RMSprop(
      model.parameters(), lr=config.learning_rate, alpha=config.rmsprop_decay,
      eps=config.rmsprop_eps)
  images = torch.from_numpy(_images(settings.batch, image_shape))

  def one_step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch_reference.bits_per_dim(model(images), images)
    loss.backward()
    optimizer.step()
    return loss

  start = time.perf_counter()
  one_step()
  first_s = time.perf_counter() - start

  def run_steps(n):
    for _ in range(n):
      loss = one_step()
    loss.item()

  seconds = _timed_windows(run_steps, settings.warmup, settings.steps,
                           settings.windows)
  a = torch.randn(2048, 2048)
  best = float('inf')
  for _ in range(10):
    start = time.perf_counter()
    a @ a  # pylint: disable=pointless-statement
    best = min(best, time.perf_counter() - start)
  return dict(
      framework=f'torch {torch.__version__}', seconds_per_step=seconds,
      compile_s=first_s, peak_rss_mib=_peak_rss_mib(), xla_temp_mib=None,
      params=sum(p.numel() for p in model.parameters()),
      # The reference computes the vertical stack on every row.
      flops=cost.flops_per_image(config.model, image_shape, all_rows=True),
      matmul_gflops=2 * 2048**3 / best / 1e9)


def check_same_loss() -> float:
  """|JAX loss - torch loss| for the same weights on a small RGB model."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import torch
  from bench import torch_reference  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import likelihood, models  # pylint: disable=g-import-not-at-top

  config = model_config(12, 3)
  config.num_layers, config.head_features = 3, 24
  model = models.create_model(config)
  images = _images(4, (8, 8, 3))
  params = model.init(jax.random.PRNGKey(3), jnp.asarray(images[:1]))['params']
  # Random biases too, so that every parameter is checked.
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
  params = jax.tree_util.tree_unflatten(treedef, [
      x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  jax_loss = float(likelihood.bits_per_dim(
      model.apply({'params': params}, jnp.asarray(images)),
      jnp.asarray(images)).mean())
  reference = torch_reference.from_config(config)
  torch_reference.from_flax(reference, params)
  with torch.no_grad():
    torch_images = torch.from_numpy(images)
    torch_loss = float(torch_reference.bits_per_dim(
        reference(torch_images), torch_images))
  return abs(jax_loss - torch_loss), jax_loss, torch_loss


def _child(spec_json: str, settings: Settings) -> None:
  spec = json.loads(spec_json)
  if spec['framework'] == 'torch':
    result = measure_torch(settings, spec['features'],
                           tuple(spec['image_shape']),
                           spec.get('num_layers'))
  else:
    result = measure_jax(settings, spec['features'],
                         tuple(spec['image_shape']), spec['conv_impl'],
                         spec.get('num_layers'))
  print('RESULT ' + json.dumps(result))


def _run_child(argv, spec) -> dict:
  command = [sys.executable, '-m', 'bench.train', *argv, '--child',
             json.dumps(spec)]
  out = subprocess.run(command, capture_output=True, text=True, check=False,
                       cwd=ROOT, env={**os.environ,
                                      **isa_environment(_MAX_ISA.value)})
  for line in out.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[len('RESULT '):])
  raise RuntimeError(f'benchmark {spec} failed:\n{out.stderr[-3000:]}')


def _row(name, image_shape, batch, result) -> str:
  seconds = result['seconds_per_step']
  images_per_s = batch / seconds
  gflops = result['flops']['train'] * images_per_s / 1e9
  peak = result['matmul_gflops']
  temp = result['xla_temp_mib']
  H, W, C = image_shape
  return (f"| {name} | {H}x{W}x{C} | {result['framework']} | "
          f"{result['params']:,} | {1 / seconds:.3f} | {images_per_s:.1f} | "
          f"{1e3 * seconds / batch:.1f} | "
          f"{result['flops']['forward'] / 1e9:.3f} / "
          f"{result['flops']['train'] / 1e9:.3f} | {gflops:.1f} | "
          f"{peak:.0f} | {100 * gflops / peak:.0f}% | "
          f"{result['peak_rss_mib']:.0f} | "
          f"{'-' if temp is None else f'{temp:.0f}'} | "
          f"{result['compile_s']:.1f} |")


HEADER = ('| model | image | framework | params | steps/s | images/s | '
          'ms/image | GFLOP/image fwd / train | GFLOP/s | matmul GFLOP/s | '
          '% of matmul | peak RSS MiB | XLA temp MiB | compile s |\n'
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  settings = Settings.from_flags()
  if _CHILD.value:
    _child(_CHILD.value, settings)
    return

  if _SCALING.value:
    runs = [(f'default {s}px', dict(features=48, image_shape=(s, s, 1)))
            for s in SCALING_SIZES]
  else:
    runs = [(name, MODELS[name]) for name in _MODELS.value.split(',')]

  if _COMPARE_TORCH.value:
    try:
      difference, jax_loss, torch_loss = check_same_loss()
    except ImportError as e:
      sys.exit(f'--compare-torch needs PyTorch: pip install -e ".[bench]" '
               f'({e})')
    print(f'Same weights, same loss: JAX {jax_loss:.6f} vs torch '
          f'{torch_loss:.6f} bits/dim (|diff| {difference:.1e})')
    if difference > 1e-4:
      sys.exit('The PyTorch reference does not compute the same model; '
               'the comparison would not be fair.')

  from gated_pixelcnn import tuning  # pylint: disable=g-import-not-at-top
  isa = f', capped at {_MAX_ISA.value}' if _MAX_ISA.value else ''
  print(f'{tuning.cpu_name()}{isa}, {os.cpu_count()} '
        f'cores; batch {settings.batch}, {settings.dtype}; median of '
        f'{settings.windows} windows of {settings.steps} steps after '
        f'{settings.warmup} warm-up steps\n')
  print(HEADER)
  for name, spec in runs:
    frameworks = [f'jax {impl}' for impl in _CONV_IMPLS.value] + (
        ['torch'] if _COMPARE_TORCH.value else [])
    results = {}
    for framework in frameworks:
      kind, _, impl = framework.partition(' ')
      results[framework] = _run_child(
          settings.argv(), dict(spec, framework=kind, conv_impl=impl))
      print(_row(name, spec['image_shape'], settings.batch,
                 results[framework]), flush=True)
    if _COMPARE_TORCH.value:
      for impl in _CONV_IMPLS.value:
        ratio = (results['torch']['seconds_per_step'] /
                 results[f'jax {impl}']['seconds_per_step'])
        print(f'| {name} | | JAX {impl} / torch throughput | | | '
              f'{ratio:.2f}x | | | | | | | | |', flush=True)


if __name__ == '__main__':
  app.run(main)
