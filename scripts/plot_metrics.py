"""Plots train/eval bits/dim from a workdir's TensorBoard events to a PNG.

  python scripts/plot_metrics.py WORKDIR OUT.png [--title TITLE]

Needs matplotlib (`pip install -e ".[plot]"`).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import matplotlib  # pylint: disable=g-import-not-at-top
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from gated_pixelcnn import records  # pylint: disable=g-import-not-at-top

_TITLE = flags.DEFINE_string('title', '', 'title of the plot')


def main(argv):
  if len(argv) != 3:
    raise app.UsageError(
        f'expected the arguments WORKDIR OUT.png, got {argv[1:]}')
  workdir, out = argv[1:]
  scalars = records.read_scalars(workdir)
  fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
  for tag, style in (('train/bits_per_dim', dict(lw=1, alpha=0.7)),
                     ('eval/bits_per_dim', dict(marker='o', lw=2))):
    if tag in scalars:
      steps, _, values = zip(*scalars[tag])
      ax.plot(steps, values, label=tag, **style)
  if 'eval/bits_per_dim' in scalars:
    step, _, value = scalars['eval/bits_per_dim'][-1]
    ax.annotate(f'{value:.3f}', (step, value), textcoords='offset points',
                xytext=(-10, 8), ha='right')
  ax.set_xlabel('training step')
  ax.set_ylabel('bits/dim')
  ax.set_title(_TITLE.value)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out)
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
