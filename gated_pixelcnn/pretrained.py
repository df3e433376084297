"""Pretrained models: a trained run's evaluation parameters, exported to a
small folder that ships with the project, and read back with every check.

A pretrained folder holds

  params.npz   the evaluation parameters (the debiased average if the run
               kept one), one float32 array per parameter path
  model.json   the format version, the config that built the model, the
               step, what it reached (test bits/dim, all images and the
               first 500), the SHA-256 of params.npz, how it was trained
  config.py    a configs/*.py file: the config, with `pretrained` set to
               this folder, for --config

Every --mode but train runs on it: the parameters come from the folder and
the outputs go to --workdir (the folder is never written to):

  python -m gated_pixelcnn.main --config=pretrained/fashion_mnist/config.py \\
      --workdir=/tmp/out --mode=sample

Export a run with gated_pixelcnn.export:

  python -m gated_pixelcnn.export --config=configs/default.py \\
      --workdir=workdirs/default --out=pretrained/fashion_mnist
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
from typing import Any
import zipfile

import jax
import ml_collections
import numpy as np

from gated_pixelcnn import datasets
from gated_pixelcnn import errors
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import likelihood
from gated_pixelcnn import steps
from gated_pixelcnn import train

FORMAT = 1
PARAMS, RECORD, CONFIG = 'params.npz', 'model.json', 'config.py'
# The images the recorded subset bits/dim is computed on (tests check it).
SUBSET = 500
# A pretrained folder's parameters may take at most this much.
MAX_BYTES = 64 * 2**20
ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_PY = '''"""The pretrained model of this folder: its config, with
`pretrained` set to the folder (gated_pixelcnn.pretrained). Any --mode but
train:

  python -m gated_pixelcnn.main --config={path}/config.py --workdir=OUT \\\\
      --mode=sample   # eval, complete, compress, decompress
"""

import pathlib

from gated_pixelcnn import pretrained


def get_config():
  return pretrained.config_of(pathlib.Path(__file__).resolve().parent)
'''


class PretrainedError(errors.UserError, ValueError):
  """A pretrained folder that is missing, altered or of another version."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
  config: ml_collections.ConfigDict
  params: Any            # host arrays, the model's parameter tree
  record: dict[str, Any]
  path: pathlib.Path


def sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def flat(params, leaf=np.asarray) -> dict[str, Any]:
  """{'block_0/v_to_h/kernel': array, ...}."""
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf(x)
          for path, x in jax.tree_util.tree_leaves_with_path(params)}


def _abstract_params(trainer) -> dict[str, jax.ShapeDtypeStruct]:
  """The parameter shapes of the trainer's model, without computing them."""
  return flat(trainer.abstract_state.params,
              lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))


def _fail(path, what: str) -> PretrainedError:
  return PretrainedError(f'pretrained model {path}: {what}')


def _read_record(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_dir():
    raise _fail(path, 'no such folder. The project ships one in '
                f'{ROOT / "pretrained"}; or export a run with python -m '
                'gated_pixelcnn.export.')
  for name in (PARAMS, RECORD):
    if not (path / name).is_file():
      raise _fail(path, f'{name} is missing: copy the whole folder again.')
  try:
    record = json.loads((path / RECORD).read_text())
    version, sha = record['format'], record['params_sha256']
    record['config']   # pylint: disable=pointless-statement
  except (ValueError, KeyError, TypeError) as e:
    raise _fail(path, f'{RECORD} is not a pretrained record ({e}).') from e
  if version != FORMAT:
    raise _fail(path, f'format version {version} (written by gated_pixelcnn '
                f'{record.get("gated_pixelcnn", "?")}); this version reads '
                f'format {FORMAT}. Use the version that wrote it.')
  if (path / PARAMS).stat().st_size > MAX_BYTES:
    raise _fail(path, f'{PARAMS} is larger than {MAX_BYTES // 2**20} MiB.')
  if sha256(path / PARAMS) != sha:
    raise _fail(path, f'{PARAMS} does not match the SHA-256 in {RECORD}: the '
                'file was altered or is incomplete; copy it again.')
  return record


def _default_config() -> ml_collections.ConfigDict | None:
  """configs/default.py of this checkout, if the package runs from one."""
  path = ROOT / 'configs' / 'default.py'
  if not path.is_file():
    return None
  spec = importlib.util.spec_from_file_location('_pretrained_default', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _merge(config: ml_collections.ConfigDict, saved: dict) -> None:
  """Sets the saved values onto ``config`` (keys it lacks are added)."""
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(config.get(key),
                                              ml_collections.ConfigDict):
      _merge(config[key], value)
    elif key in config and isinstance(config[key], tuple):
      config[key] = tuple(value)
    else:
      config[key] = value


def config_of(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config of the pretrained folder ``path`` (checked), with
  ``pretrained`` set to it: what its config.py returns. The saved config
  goes onto this version's default, so keys added since keep defaults."""
  path = pathlib.Path(path).resolve()
  return _config(path, _read_record(path))


def _config(path: pathlib.Path, record: dict[str, Any]
            ) -> ml_collections.ConfigDict:
  """config_of, from the folder's record already read and checked."""
  saved = record['config']
  config = _default_config() or ml_collections.ConfigDict()
  try:
    with config.unlocked() if config.is_locked else contextlib.nullcontext():
      _merge(config, saved)
      config.model = ml_collections.ConfigDict(saved['model'])
    # The folder holds the averaged parameters: nothing to average.
    config.ema_decay = 0.0
    config.pretrained = str(path)
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise _fail(path, f'its config does not fit this version ({e}).') from e
  return config


def load(path: str | os.PathLike, trainer=None) -> Pretrained:
  """The pretrained folder ``path``: its config and parameters, checked
  against the record (SHA-256, format) and against the model the config
  builds (every path, shape and dtype; ``trainer``: the one built)."""
  path = pathlib.Path(path).resolve()
  record = _read_record(path)
  config = _config(path, record)
  expected = _abstract_params(trainer or train.Trainer(config))
  try:
    with zipfile.ZipFile(path / PARAMS) as z:   # sizes before reading
      sizes = {i.filename[:-len('.npy')]: i.file_size for i in z.infolist()}
    if set(sizes) != set(expected):
      missing = sorted(set(expected) - set(sizes))[:3]
      extra = sorted(set(sizes) - set(expected))[:3]
      raise ValueError(f'parameters missing {missing}, unexpected {extra}')
    for name, x in expected.items():
      if sizes[name] > x.size * x.dtype.itemsize + 1024:
        raise ValueError(f'{name} is larger than its shape {x.shape}')
    with np.load(path / PARAMS, allow_pickle=False) as npz:
      arrays = {name: npz[name] for name in expected}
    for name, x in expected.items():
      if arrays[name].shape != x.shape or arrays[name].dtype != x.dtype:
        raise ValueError(f'{name} has shape {arrays[name].shape} '
                         f'{arrays[name].dtype}, the model {x.shape} '
                         f'{x.dtype}')
  except (ValueError, OSError, zipfile.BadZipFile, KeyError) as e:
    raise _fail(path, f'its parameters do not fit the model its config '
                f'builds ({e}): it was made by an incompatible version '
                f'(gated_pixelcnn {record.get("gated_pixelcnn", "?")}).') from e
  return Pretrained(config, _unflatten(arrays), record, path)


def _unflatten(arrays: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for name, x in arrays.items():
    node = tree
    *parents, leaf = name.split('/')
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = x
  return tree


def state(config, trainer, step: int | None = None):
  """A TrainState for ``trainer`` holding the pretrained parameters of
  ``config.pretrained`` at its recorded step (for the --mode jobs);
  ``step``, if given, must be that step."""
  model = load(config.pretrained, trainer)
  if step is not None and step != model.record['step']:
    raise errors.CheckpointError(
        f'the pretrained model {model.path} is step {model.record["step"]}, '
        f'not {step} (a file compressed with another model?).')
  params = jax.device_put(model.params, trainer.state_sharding.params)
  return steps.TrainState(
      step=jax.numpy.asarray(model.record['step'], jax.numpy.int32),
      params=params, opt_state=None, ema_params=None,
      rng=jax.random.PRNGKey(0))


def first_test_images(config, n: int = SUBSET) -> np.ndarray:
  """uint8 [n, H, W, 1]: the first ``n`` images of the dataset's local test
  file (the IDX file of MNIST or Fashion-MNIST), in file order: what the
  recorded subset bits/dim is computed on, read without TFDS."""
  folder = (config.get('manual_dir') or
            input_pipeline.get_spec(config.dataset).default_manual_dir)
  if config.dataset not in ('fashion_mnist', 'mnist') or not folder:
    raise PretrainedError(f'no local test file of {config.dataset} to read '
                          'the first test images from.')
  path = datasets.find_file(pathlib.Path(folder), 't10k-images-idx3-ubyte')
  return datasets.read_idx(path, 3)[:n, :, :, None]


def subset_bits_per_dim(model, params, images, batch: int = 100) -> float:
  """Exact bits/dim of ``images`` (a multiple of ``batch`` of them), one
  jitted program of batch ``batch``: the recorded figure and its test."""

  @jax.jit
  def nats(params, x):
    logits = model.apply({'params': params}, x)
    return -likelihood.log_prob(logits, x).sum()

  total = 0.0
  for k in range(0, len(images), batch):
    total += float(nats(params, np.asarray(images[k:k + batch], np.int32)))
  return total / (images.size * np.log(2.0))
