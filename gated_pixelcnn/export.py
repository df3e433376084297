"""Exports a trained run as a pretrained folder (gated_pixelcnn.pretrained):
its evaluation parameters, the config that built them and what they reach.

  python -m gated_pixelcnn.export --config=configs/default.py \\
      --workdir=workdirs/default --out=pretrained/fashion_mnist
"""

from __future__ import annotations

import json
import pathlib
import platform
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import numpy as np

from gated_pixelcnn import errors
from gated_pixelcnn import figures
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import pretrained
from gated_pixelcnn import runs
from gated_pixelcnn import workdir as workdir_lib


def export(config, workdir: str, out: str) -> dict[str, Any]:
  """Writes the pretrained folder ``out`` from the newest checkpoint of the
  run in ``workdir``: its evaluation parameters and their test bits/dim."""
  out_path = pathlib.Path(out)
  if out_path.exists():
    raise pretrained.PretrainedError(
        f'{out} exists; export into a new folder (an existing model is never '
        'overwritten).')
  trainer, train_state = runs.restore(config, workdir, read_only=True)
  params = figures.host_params(trainer.eval_params(train_state))
  builder = input_pipeline.get_builder(config)
  full = trainer.evaluate_split(params, builder)
  subset = pretrained.SUBSET
  first = pretrained.subset_bits_per_dim(
      trainer.model, params, pretrained.first_test_images(config))
  flat = pretrained.flat(params)
  size = sum(x.nbytes for x in flat.values())
  if size > pretrained.MAX_BYTES:
    raise pretrained.PretrainedError(
        f'the parameters take {size / 2**20:.1f} MiB, more than a pretrained '
        f'folder may ({pretrained.MAX_BYTES >> 20}).')
  tmp = out_path.parent / f'.{out_path.name}.partial'
  tmp.mkdir(parents=True)
  np.savez(tmp / pretrained.PARAMS, **flat)
  record = {
      'format': pretrained.FORMAT, 'gated_pixelcnn': _version(),
      'config': json.loads(config.to_json_best_effort()),
      'step': int(train_state.step), 'dataset': config.dataset,
      'split': trainer.spec.eval_split,
      'bits_per_dim': full[trainer.metric],
      'num_examples': full['num_examples'],
      f'bits_per_dim_first_{subset}': first,
      'params_sha256': pretrained.sha256(tmp / pretrained.PARAMS),
      'num_params': int(sum(x.size for x in flat.values())),
      'exported': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
      'exported_on': f'{platform.machine()}, {jax.devices()[0].platform}, '
                     f'JAX {jax.__version__}',
  }
  (tmp / pretrained.RECORD).write_text(json.dumps(record, indent=1) + '\n')
  (tmp / pretrained.CONFIG).write_text(pretrained.CONFIG_PY.format(path=out))
  tmp.rename(out_path)
  logging.info('Exported step %d of %s to %s: test %s %.4f (first %d images '
               '%.4f), %.1f MiB.', record['step'], workdir, out,
               trainer.metric, record['bits_per_dim'], subset,
               record[f'bits_per_dim_first_{subset}'], size / 2**20)
  return record


def _version() -> str:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version('gated_pixelcnn')
  except Exception:  # pylint: disable=broad-except
    return 'unknown'


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  try:
    export(FLAGS.config, workdir_lib.resolve(FLAGS.workdir), FLAGS.out)
  except errors.UserError as e:
    raise SystemExit(f'error: {e}') from e


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'The run\'s config file.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'The trained run.')
  flags.DEFINE_string('out', None, 'The new pretrained folder.')
  flags.mark_flags_as_required(['config', 'workdir', 'out'])
  app.run(main)
