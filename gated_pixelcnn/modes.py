"""The --mode jobs of gated_pixelcnn.main: train; eval, sample, complete,
reconstruct, embed_sample and interpolate on a trained workdir (or a
pretrained folder); compress and decompress, with their files.

Each job is a function (config, workdir); MODES maps the --mode names to
them.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Iterable

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gated_pixelcnn import checkpointing
from gated_pixelcnn import compression
from gated_pixelcnn import container
from gated_pixelcnn import errors
from gated_pixelcnn import figures
from gated_pixelcnn import image_files
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import records
from gated_pixelcnn import runs
from gated_pixelcnn import train
from gated_pixelcnn import validation
from gated_pixelcnn import workdir as workdir_lib

CompressionError = compression.CompressionError


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       extra_hooks: Iterable[Callable[[int], None]] = ()
                       ) -> dict[str, float]:
  """--mode=train: `train.train_and_evaluate` with the run the model is
  conditioned on, if any, loaded first (runs.load_conditioning)."""
  validation.validate_config(config)   # before loading any other run
  return train.train_and_evaluate(
      config, workdir, extra_hooks,
      conditioning_run=runs.load_conditioning(config))


def _writes_workdir(mode: Callable) -> Callable:
  """A --mode job on a trained run's workdir. It holds the workdir's lock
  while it runs; if a training run holds it, the job still runs, reading
  the checkpoints without moving any (``alone=False``), and writes only
  files named by step (samples, TensorBoard events), not the run's
  eval_results.json. With a pretrained model (``config.pretrained``) the
  workdir is a folder of the job's own outputs."""

  @functools.wraps(mode)
  def run(config: ml_collections.ConfigDict, workdir: str):
    if config.get('pretrained'):   # --workdir only receives the outputs
      with workdir_lib.writer(workdir) as workdir:
        return mode(config, workdir, alone=True)
    with workdir_lib.job(workdir) as (workdir, alone):
      return mode(config, workdir, alone=alone)
  return run


def _writer(workdir):
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)


@_writes_workdir
def evaluate_checkpoint(config: ml_collections.ConfigDict,
                        workdir: str, alone: bool = True) -> dict[str, float]:
  """--mode=eval: exact test bits/dim of the newest checkpoint in workdir."""
  trainer, state = runs.restore(config, workdir, read_only=not alone)
  builder = input_pipeline.get_builder(config)
  metrics = trainer.evaluate_split(trainer.eval_params(state), builder)
  step = int(state.step)
  writer = _writer(workdir)
  writer.write_scalars(step, records.eval_scalars(metrics))
  writer.flush()
  if alone:
    records.write_eval_results(workdir, step, metrics, config)
  else:
    logging.info('Test %s at step %d: %s (not written to eval_results.json, '
                 'which belongs to the training run).', trainer.metric, step,
                 metrics)
  return metrics


@_writes_workdir
def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                      alone: bool = True) -> str:
  """--mode=sample: a grid of samples to WORKDIR/samples/ and TensorBoard.

  Unconditional models: a square grid; class-conditional: one row per class;
  multi-scale: low-resolution samples, then full-size samples given each;
  auto-encoder and embedding models: test images | samples given their h.
  """
  trainer, state = runs.restore(config, workdir, read_only=not alone)
  if not figures.can_sample(trainer):
    raise errors.ConfigError(
        f'model.name = {config.model.name!r} is not a generative model; '
        '--mode=reconstruct shows what the MSE auto-encoder does, '
        '--mode=eval the embedding network\'s triplet loss.')
  step = int(state.step)
  rng = _rng(config, step)
  params = figures.host_params(trainer.eval_params(state))
  if trainer.conditioner.source == 'subsample':
    grid = figures.multiscale_grid(trainer, params, rng,
                                   config.sample.num_samples,
                                   config.sample.num_completions)
  else:
    grid = figures.samples_grid(trainer, params, rng,
                                input_pipeline.get_builder(config))
  name = f'samples_{config.sample.method}_t{config.sample.temperature:g}'
  return figures.write_grid(_writer(workdir), workdir, step, name, grid)


def _rng(config, step):
  return jax.random.fold_in(jax.random.PRNGKey(config.sample.seed), step)


@_writes_workdir
def reconstruct_checkpoint(config: ml_collections.ConfigDict,
                           workdir: str, alone: bool = True) -> str:
  """--mode=reconstruct: the paper's auto-encoder figure.

  Rows of: a test image | its MSE auto-encoder reconstruction (the run in
  sample.mse_workdir, if set) | PixelCNN-decoder samples given its h. On an
  MSE auto-encoder's own workdir: image | reconstruction.
  """
  trainer, state = runs.restore(config, workdir, read_only=not alone)
  model = trainer.model
  if not (model.has_encoder or model.objective == 'mse'):
    raise errors.ConfigError(
        f'--mode=reconstruct needs an auto-encoder (model.name = '
        f'pixelcnn_autoencoder or mse_autoencoder), not '
        f'{config.model.name!r}.')
  builder = input_pipeline.get_builder(config)
  images, _ = figures.test_images(trainer, builder, config.sample.num_samples,
                                  per_class=True)
  params = figures.host_params(trainer.eval_params(state))
  step = int(state.step)
  if model.objective == 'mse':
    grid = figures.make_grid(np.stack(
        [images, mse_reconstruction(model, params, images)], axis=1))
  else:
    extra = []
    if config.sample.mse_workdir:
      run = runs.load_run(
          config.sample.mse_workdir, 'MSE auto-encoder baseline',
          'configs/fashion_mnist_autoencoder.py:mse')
      if run.trainer.model.objective != 'mse':
        raise errors.ConfigError(
            f'sample.mse_workdir {config.sample.mse_workdir} '
            f'holds a {run.config.model.name!r} run, not an '
            'mse_autoencoder.')
      extra.append(mse_reconstruction(
          run.trainer.model, figures.host_params(run.params), images))
    else:
      logging.warning('sample.mse_workdir is not set: the figure has no MSE '
                      'baseline column.')
    grid = figures.conditional_grid(trainer, params, _rng(config, step),
                                    images, config.sample.num_completions,
                                    extra_columns=extra)
  return figures.write_grid(_writer(workdir), workdir, step, 'reconstructions',
                            grid)


def mse_reconstruction(model, params, images) -> np.ndarray:
  out = model.apply({'params': params}, jnp.asarray(images))
  return np.asarray(jnp.clip(jnp.round(out), 0, 255), np.uint8)


def _check_vector_conditioned(trainer, mode: str) -> None:
  model = trainer.model
  ok = model.has_encoder or trainer.conditioner.source == 'embedding'
  if not ok:
    raise errors.ConfigError(
        f'--mode={mode} needs a model conditioned on an image\'s vector h: '
        'an embedding-conditioned model (configs/fashion_mnist_embedding_'
        'pixelcnn.py) or a PixelCNN auto-encoder; '
        f'{trainer.config.model.name!r} with conditioning.source = '
        f'{trainer.conditioner.source!r} is not.')


@_writes_workdir
def embed_sample_checkpoint(config: ml_collections.ConfigDict,
                            workdir: str, alone: bool = True) -> str:
  """--mode=embed_sample: new images from the h of unseen test images.

  Rows of: a test image (one per class in turn) | sample.num_completions
  samples given its embedding.
  """
  trainer, state = runs.restore(config, workdir, read_only=not alone)
  _check_vector_conditioned(trainer, 'embed_sample')
  step = int(state.step)
  grid = figures.samples_grid(
      trainer, figures.host_params(trainer.eval_params(state)),
      _rng(config, step), input_pipeline.get_builder(config))
  return figures.write_grid(_writer(workdir), workdir, step, 'embed_samples',
                            grid)


@_writes_workdir
def interpolate_checkpoint(config: ml_collections.ConfigDict,
                           workdir: str, alone: bool = True) -> str:
  """--mode=interpolate: samples along the line between the h of two test
  images (sample.interpolate_pair, indices into the test split)."""
  trainer, state = runs.restore(config, workdir, read_only=not alone)
  _check_vector_conditioned(trainer, 'interpolate')
  a, b = config.sample.interpolate_pair
  builder = input_pipeline.get_builder(config)
  source = input_pipeline.open_split(builder, trainer.spec.eval_split,
                                    per_process=False)
  for k in (a, b):
    if not 0 <= k < len(source):
      raise errors.ConfigError(
          f'sample.interpolate_pair = {(a, b)}: index {k} is not '
          f'in the test split (0..{len(source) - 1}).')
  image_a, image_b = (ex['image'] for ex in source.__getitems__([a, b]))
  step = int(state.step)
  grid = figures.interpolation_grid(
      trainer, figures.host_params(trainer.eval_params(state)),
      _rng(config, step), image_a, image_b, config.sample.num_interpolations,
      config.sample.num_completions)
  return figures.write_grid(_writer(workdir), workdir, step,
                            f'interpolation_{a}_{b}', grid)


@_writes_workdir
def complete_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        alone: bool = True) -> str:
  """--mode=complete: test images with their lower part sampled again."""
  trainer, state = runs.restore(config, workdir, read_only=not alone)
  if figures.is_conditioned_on_images(trainer.model) or not (
      figures.can_sample(trainer)):
    raise errors.ConfigError(
        f'--mode=complete is for unconditional and class-conditional models; '
        f'for {config.model.name!r} use --mode=sample (samples given the h '
        'of test images).')
  H = trainer.spec.image_shape[0]
  num_rows = config.sample.observed_rows
  if num_rows is None:
    num_rows = H // 2
  if not 0 <= num_rows <= H:
    raise errors.ConfigError(
        f'sample.observed_rows = {num_rows} must be in 0..{H}.')
  images, labels = figures.test_images(
      trainer, input_pipeline.get_builder(config), config.sample.num_samples)
  f = config.get('subsample', 1)
  images = images[:, ::f, ::f]
  step = int(state.step)
  grid = figures.completion_grid(
      trainer.model, figures.host_params(trainer.eval_params(state)),
      _rng(config, step), images,
      labels if trainer.model.num_classes else None, num_rows,
      config.sample.num_completions, config.sample)
  return figures.write_grid(_writer(workdir), workdir, step, 'completions',
                            grid)


# ------------------------------------------------ compress and decompress


def _check_one_process() -> None:
  if jax.process_count() > 1:
    raise CompressionError(
        'compress and decompress run in one process: start them without '
        '--distributed (one host codes a file in sequence).')


def compress_checkpoint(config: ml_collections.ConfigDict,
                        workdir: str) -> str:
  """--mode=compress: compress.input -> compress.output (a .gpx file, or with
  compress.per_image a folder of one .gpx per image)."""
  _check_one_process()
  per_image = config.compress.per_image
  out = image_files.output(config, folder=per_image)
  trainer = runs.make_trainer(config)
  codec = compression.Codec.from_workdir(config, workdir, config.compress.step,
                             trainer=trainer)
  images, names, what = image_files.load_inputs(config,
                                                trainer.spec.image_shape)
  if per_image and names is None:
    names = [f'{k:05d}' for k in range(len(images))]
  logging.info('Compressing %s with the model of step %d (fingerprint %s).',
               what, codec.step, codec.fingerprint.hex())
  start = time.time()
  if per_image:
    files = codec.compress_files(list(images), progress=True)
    image_files.write_folder(out, {f'{s}{compression.SUFFIX}': d
                                   for s, d in zip(names, files)})
    size = sum(len(d) for d in files)
  else:
    data = codec.compress(images, names, progress=True)
    image_files.write_file(out, data)
    size = len(data)
  logging.info('Wrote %s: %d images, %d bytes, %.4f bits/dim (header '
               'included), %.1f images/s.', out, len(images), size,
               8 * size / images.size, len(images) / (time.time() - start))
  return str(out)


def _codec_of(config, workdir, trainer, model_id: bytes
              ) -> compression.Codec:
  """The codec of compress.step, or (None) of the newest checkpoint whose
  model id is ``model_id`` (one-image files name no step). Falls back to
  the newest, whose check then says what is wrong."""
  codec = compression.Codec.from_workdir(config, workdir, config.compress.step,
                                         trainer=trainer)
  if config.compress.step is not None or config.get('pretrained') or (
      codec.fingerprint.startswith(model_id)):
    return codec
  manager = checkpointing.create_manager(workdir, config.max_to_keep)
  try:
    steps = sorted(manager.all_steps(), reverse=True)
  finally:
    manager.close()
  for step in steps:
    if step == codec.step:
      continue
    try:
      other = compression.Codec.from_workdir(config, workdir, step,
                                             trainer=trainer)
    except checkpointing.CheckpointError as e:
      logging.warning('Skipping the checkpoint of step %d: %s', step, e)
      continue
    if other.fingerprint.startswith(model_id):
      logging.info('The files were compressed with the checkpoint of step '
                   '%d.', step)
      return other
  return codec


def decompress_checkpoint(config: ml_collections.ConfigDict,
                          workdir: str) -> str:
  """--mode=decompress: compress.input (a .gpx file or a folder of them) ->
  PNG files in the new folder compress.output. Many-image files decode with
  the checkpoint step they name (compress.step is ignored); one-image files
  with compress.step, or (None) the newest checkpoint of their model id."""
  _check_one_process()
  spec = config.compress.input
  if not spec:
    raise CompressionError('set --config.compress.input: a .gpx file or a '
                           'folder of them.')
  src = epath.Path(spec)
  if not src.exists():
    raise CompressionError(f'compress.input {spec} does not exist.')
  out = image_files.output(config, folder=True)
  paths = (image_files.list_files(src, compression.SUFFIX) if src.is_dir()
           else [src])
  blobs = {p: p.read_bytes() for p in paths}
  compact = {p: d for p, d in blobs.items() if container.is_compact(d)}
  compact_ids = {container.read_compact(d, str(p)).model_id
                 for p, d in compact.items()}   # each file parsed first
  headers = {p: compression.read_header(d, str(p)) for p, d in blobs.items()
             if p not in compact}
  run_steps = sorted({h.step for h in headers.values()})
  if len(run_steps) > 1:
    raise CompressionError(f'{spec} holds files of several checkpoint steps '
                           f'{run_steps}; decompress them separately.')
  if run_steps and config.compress.step is not None and (
      config.compress.step != run_steps[0]):
    logging.warning('compress.step = %d is ignored: the files name step %d.',
                    config.compress.step, run_steps[0])
  trainer = runs.make_trainer(config)
  codecs = {}
  if run_steps:
    codec = codecs['many'] = compression.Codec.from_workdir(
        config, workdir, run_steps[0], trainer=trainer)
    for p, h in headers.items():   # all checked before any decoding
      codec.check_header(h, str(p))
  if compact:
    if len(compact_ids) > 1:
      raise CompressionError(
          f'{spec} holds one-image files of {len(compact_ids)} models (ids '
          f'{", ".join(sorted(i.hex() for i in compact_ids))}); decompress '
          'them separately.')
    # decompress_files checks every header against it before decoding.
    codecs['one'] = _codec_of(config, workdir, trainer, compact_ids.pop())
  pngs, start, count = {}, time.time(), 0

  def add(name, image):
    if f'{name}.png' in pngs:
      raise CompressionError(f'two images decode to {name}.png; decompress '
                             'the files separately.')
    pngs[f'{name}.png'] = image_files.png(image)

  if compact:
    decoded = codecs['one'].decompress_files(
        list(compact.values()), [str(p) for p in compact], progress=True)
    for p, (image, _) in zip(compact, decoded):
      add(p.stem, image)
    count += len(compact)
  for p in headers:
    images, names = codecs['many'].decompress(
        blobs[p], progress=len(paths) == 1, what=str(p))
    if names is None:
      width = max(5, len(str(len(images) - 1)))
      names = [f'{k:0{width}d}' for k in range(len(images))]
      if len(paths) > 1:
        names = [p.stem] if len(images) == 1 else [
            f'{p.stem}_{x}' for x in names]
    for name, image in zip(names, images):
      add(name, image)
    count += len(images)
  image_files.write_folder(out, pngs)
  logging.info('Decompressed %d images into %s (%.1f images/s); every chunk '
               'matched its pixel digest.', count, out,
               count / (time.time() - start))
  return str(out)


MODES = {'train': train_and_evaluate,
         'eval': evaluate_checkpoint,
         'sample': sample_checkpoint,
         'complete': complete_checkpoint,
         'reconstruct': reconstruct_checkpoint,
         'embed_sample': embed_sample_checkpoint,
         'interpolate': interpolate_checkpoint,
         'compress': compress_checkpoint,
         'decompress': decompress_checkpoint}
