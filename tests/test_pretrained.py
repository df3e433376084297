"""Pretrained models: export, every --mode from the folder without writing
into it, clear errors for a missing, altered or incompatible folder, and
the committed model's recorded bits/dim."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from gated_pixelcnn import datasets
from gated_pixelcnn import errors
from gated_pixelcnn import export
from gated_pixelcnn import models
from gated_pixelcnn import modes
from gated_pixelcnn import pretrained
from gated_pixelcnn import train
from gated_pixelcnn import workdir
from tests import helpers

# The model that ships with the project (README, docs/pretrained.md).
COMMITTED = helpers.ROOT / 'pretrained' / 'fashion_mnist'


def _digest(folder) -> dict[str, str]:
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(folder).iterdir())}


@pytest.fixture
def exported(fake_config, tmp_path):
  """A tiny model trained 4 steps on the generated data, exported."""
  fake_config.ema_decay = 0.9
  run = str(tmp_path / 'run')
  train.train_and_evaluate(fake_config, run)
  record = export.export(fake_config, run, str(tmp_path / 'model'))
  return tmp_path / 'model', record


def test_export_records_what_the_model_reaches(exported, fake_config):
  folder, record = exported
  assert sorted(os.listdir(folder)) == ['config.py', 'model.json',
                                        'params.npz']
  assert record['step'] == 4 and record['num_examples'] == 37
  model = pretrained.load(folder)
  assert model.config.pretrained == str(folder)
  assert model.config.ema_decay == 0   # the folder holds the average
  # The recorded subset figure is what the test-side function computes.
  images = pretrained.first_test_images(model.config)
  assert images.shape == (37, 28, 28, 1)
  value = pretrained.subset_bits_per_dim(
      models.create_model(model.config.model), model.params, images)
  assert value == pytest.approx(record['bits_per_dim_first_500'], rel=1e-6)
  with pytest.raises(pretrained.PretrainedError, match='exists'):
    export.export(fake_config, str(folder.parent / 'run'), str(folder))


def test_every_mode_runs_from_the_folder_without_writing_into_it(
    exported, tmp_path):
  folder, record = exported
  before = _digest(folder)
  config = pretrained.config_of(folder)
  out = str(tmp_path / 'out')
  metrics = modes.evaluate_checkpoint(config, out)
  assert metrics['bits_per_dim'] == pytest.approx(record['bits_per_dim'],
                                                  rel=1e-5)
  results = json.loads((tmp_path / 'out' / 'eval_results.json').read_text())
  assert results['step'] == 4
  assert modes.sample_checkpoint(config, out).endswith('_00000004.png')
  assert modes.complete_checkpoint(config, out).endswith('.png')
  config.compress.input = 'tfds:test'
  config.compress.num_images = 3
  config.compress.output = str(tmp_path / 'three.gpx')
  modes.compress_checkpoint(config, out)
  config.compress.input = str(tmp_path / 'three.gpx')
  config.compress.output = str(tmp_path / 'three')
  modes.decompress_checkpoint(config, out)
  assert len(os.listdir(tmp_path / 'three')) == 3
  assert _digest(folder) == before
  # Training it further is not what the folder is for.
  with pytest.raises(errors.ConfigError, match='not trained further'):
    train.train_and_evaluate(config, str(tmp_path / 'more'))
  # The folder itself is not an output folder.
  with pytest.raises(workdir.WorkdirError, match='not a gated_pixelcnn '
                     'workdir'):
    modes.sample_checkpoint(config, str(folder))
  assert _digest(folder) == before


def test_the_command_line_samples_from_the_folder(exported, tmp_path):
  folder, _ = exported
  before = _digest(folder)
  out = subprocess.run(
      [sys.executable, '-m', 'gated_pixelcnn.main',
       f'--config={folder / "config.py"}', f'--workdir={tmp_path / "out"}',
       '--mode=sample', '--config.sample.num_samples=4'],
      cwd=helpers.ROOT, env=helpers.subprocess_env(), capture_output=True,
      text=True, timeout=240)
  assert out.returncode == 0, out.stderr[-3000:]
  assert os.listdir(tmp_path / 'out' / 'samples')
  assert _digest(folder) == before


def _rewrite(folder, **changes):
  record = json.loads((folder / 'model.json').read_text())
  record.update(changes)
  (folder / 'model.json').write_text(json.dumps(record))


def test_bad_folders_are_clear_errors(exported, tmp_path):
  folder, _ = exported
  with pytest.raises(pretrained.PretrainedError, match='no such folder'):
    pretrained.load(tmp_path / 'nowhere')
  data = bytearray((folder / 'params.npz').read_bytes())
  data[len(data) // 2] ^= 1
  (folder / 'params.npz').write_bytes(bytes(data))
  with pytest.raises(pretrained.PretrainedError, match='was altered'):
    pretrained.load(folder)
  data[len(data) // 2] ^= 1
  (folder / 'params.npz').write_bytes(bytes(data))
  pretrained.load(folder)
  _rewrite(folder, format=99)
  with pytest.raises(pretrained.PretrainedError, match='format version 99'):
    pretrained.load(folder)
  _rewrite(folder, format=pretrained.FORMAT)
  # Parameters of another layout (as another version would write them),
  # consistent with the record's checksum.
  with np.load(folder / 'params.npz') as npz:
    flat = dict(npz)
  name = next(iter(flat))
  flat[name] = np.zeros((3, 3), np.float32)
  np.savez(folder / 'params.npz', **flat)
  _rewrite(folder, params_sha256=hashlib.sha256(
      (folder / 'params.npz').read_bytes()).hexdigest())
  with pytest.raises(pretrained.PretrainedError,
                     match='incompatible version'):
    pretrained.load(folder)
  # An entry that claims more bytes than its parameter: refused unread.
  flat[name] = np.zeros(10**6, np.float32)
  with zipfile.ZipFile(folder / 'params.npz', 'w') as z:
    for key, value in flat.items():
      with z.open(f'{key}.npy', 'w') as f:
        np.lib.format.write_array(f, value)
  _rewrite(folder, params_sha256=hashlib.sha256(
      (folder / 'params.npz').read_bytes()).hexdigest())
  with pytest.raises(pretrained.PretrainedError, match='larger than'):
    pretrained.load(folder)
  (folder / 'model.json').unlink()
  with pytest.raises(pretrained.PretrainedError, match='model.json is '
                     'missing'):
    pretrained.load(folder)


@pytest.mark.skipif(not os.path.isdir(datasets.DEBIAN_FASHION_MNIST),
                    reason='needs Debian package dataset-fashion-mnist')
def test_the_committed_model_reaches_its_recorded_bits_per_dim():
  """Also guards checkpoint compatibility: a change to layer names,
  parameter layout or numerics that would break saved models fails here."""
  model = pretrained.load(COMMITTED)
  images = pretrained.first_test_images(model.config)
  assert images.shape == (pretrained.SUBSET, 28, 28, 1)
  value = pretrained.subset_bits_per_dim(
      models.create_model(model.config.model), model.params, images)
  assert value == pytest.approx(
      model.record[f'bits_per_dim_first_{pretrained.SUBSET}'], rel=1e-5)
  assert (COMMITTED / 'params.npz').stat().st_size < 5.5 * 2**20
