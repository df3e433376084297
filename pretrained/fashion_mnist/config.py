"""The pretrained model of this folder: its config, with
`pretrained` set to the folder (gated_pixelcnn.pretrained). Any --mode but
train:

  python -m gated_pixelcnn.main --config=pretrained/fashion_mnist/config.py --workdir=OUT \\
      --mode=sample   # eval, complete, compress, decompress
"""

import pathlib

from gated_pixelcnn import pretrained


def get_config():
  return pretrained.config_of(pathlib.Path(__file__).resolve().parent)
