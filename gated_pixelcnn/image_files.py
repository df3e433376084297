"""The files of --mode=compress and decompress: image files read and
checked before any coding, and outputs written whole or not at all (a new
file or folder, never overwriting)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings

from etils import epath
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from gated_pixelcnn import compression
from gated_pixelcnn import container
from gated_pixelcnn import input_pipeline

CompressionError = compression.CompressionError


def read_image(path, image_shape) -> np.ndarray:
  """An 8-bit image file as uint8 [H, W, C]; clear errors otherwise. The
  size and mode come from the header, checked before any pixel is decoded:
  a small file that claims a huge image is refused, not decompressed.
  H = W = None: any size up to container.MAX_SIDE."""
  H, W, C = image_shape
  expected = {1: 'L', 3: 'RGB'}.get(C)
  any_size = H is None
  try:
    with warnings.catch_warnings():
      # The size is checked below, before decoding: no warning needed.
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(path) as im:
        mode, size = im.mode, im.size
        frames = getattr(im, 'n_frames', 1)
        if any_size:
          H, W = (size[1], size[0]) if max(size) <= container.MAX_SIDE else (
              -1, -1)
        if (size[1], size[0]) == (H, W) and mode == expected and (
            frames == 1):
          im.load()
          array = np.asarray(im)
  except Image.DecompressionBombError as e:
    raise CompressionError(f'{path} claims a huge image ({e}); compress '
                           f'takes {_sizes(H, W)} images.') from e
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise CompressionError(f'{path} is not an image file Pillow can read '
                           f'({e}).') from e
  if frames > 1:
    raise CompressionError(f'{path} holds {frames} frames; compress takes '
                           'single images.')
  if mode != expected:
    raise CompressionError(
        f'{path} is a {mode!r} image; this model codes 8-bit '
        f'{"grayscale" if C == 1 else "RGB"} images (Pillow mode '
        f'{expected!r}, {C} channel{"s" if C > 1 else ""}). Converting would '
        'change its pixels, so it is not done silently.')
  if (size[1], size[0]) != (H, W):
    raise CompressionError(
        f'{path} is {size[0]}x{size[1]} (width x height); this model codes '
        f'{_sizes(H, W)} images.')
  return array.reshape(H, W, C)


def _sizes(H, W) -> str:
  if H is None or H < 0:
    return f'up to {container.MAX_SIDE}x{container.MAX_SIDE}'
  return f'{W}x{H}'


def list_files(folder: epath.Path, suffix: str | None = None
               ) -> list[epath.Path]:
  """The non-hidden files of a folder (ending in ``suffix``), sorted."""
  files = sorted(p for p in folder.iterdir()
                 if not p.name.startswith('.') and p.is_file()
                 and (suffix is None or p.name.endswith(suffix)))
  if not files:
    raise CompressionError(f'{folder} has no {suffix + " " if suffix else ""}'
                           'files.')
  return files


def load_inputs(config, image_shape
                ) -> tuple[np.ndarray, list[str] | None, str]:
  """compress.input: an image file, a folder of them, or tfds:SPLIT.

  Returns images, names (file stems; None for a TFDS split) and a
  description. Every image is read and checked before any coding starts.
  """
  spec = config.compress.input
  limit = config.compress.num_images
  if not spec:
    raise CompressionError(
        'set --config.compress.input: an image file, a folder of images, or '
        'tfds:SPLIT (e.g. tfds:test) of the config\'s dataset.')
  if limit < 0:
    raise CompressionError(f'compress.num_images must be >= 0 (0: all), got '
                           f'{limit}.')
  if spec.startswith('tfds:'):
    split = spec[len('tfds:'):]
    builder = input_pipeline.get_builder(config)
    if split not in builder.info.splits:
      raise CompressionError(
          f'{config.dataset} has no split {split!r}; it has '
          f'{sorted(builder.info.splits)}.')
    source = input_pipeline.open_split(builder, split, per_process=False)
    n = len(source) if not limit else min(limit, len(source))
    if not n:
      raise CompressionError(f'{config.dataset} {split} has no images.')
    f = config.get('subsample', 1)
    images = np.stack([ex['image'] for ex in source.__getitems__(
        list(range(n)))])[:, ::f, ::f]
    return images, None, f'{config.dataset} {split} ({n} images)'
  path = epath.Path(spec)
  if not path.exists():
    raise CompressionError(f'compress.input {spec} does not exist.')
  files = list_files(path) if path.is_dir() else [path]
  if limit:
    files = files[:limit]
  for p in files:   # names are stored as UTF-8
    try:
      p.name.encode('utf-8')
    except UnicodeEncodeError as e:
      raise CompressionError(
          f'{os.fsencode(p)!r}: the file name is not valid UTF-8, so it '
          'cannot be stored; rename the file.') from e
  images = np.stack([read_image(p, image_shape) for p in files])
  return images, [p.stem for p in files], f'{spec} ({len(files)} images)'


def output(config, folder: bool, what: str = 'compress.output'
           ) -> epath.Path:
  """compress.output: set, and new (a folder may exist if empty)."""
  if not config.compress.output:
    raise CompressionError('set --config.compress.output: the file (or, for '
                           'decompress and compress.per_image, the folder) '
                           'to write.')
  path = epath.Path(config.compress.output)
  parent = path.parent
  while not parent.exists() and parent != parent.parent:
    parent = parent.parent
  if not parent.is_dir():
    raise CompressionError(f'{what} {path} lies under {parent}, '
                           'which is a file, not a folder; give another '
                           'path.')
  if os.path.islink(path):
    raise CompressionError(f'{what} {path} is a symbolic link; give '
                           'a new path.')
  if path.exists() and not (folder and path.is_dir()
                            and not any(path.iterdir())):
    raise CompressionError(
        f'{what} {path} already exists; choose a new '
        f'{"folder" if folder else "file"} (it is never overwritten).')
  return path


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


_UMASK = _umask()   # read once: os.umask can only be read by setting it


def _readable(path) -> None:
  """Permissions of a new file or folder under the umask (mkstemp gives
  0600)."""
  os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_UMASK)


def write_folder(dst: epath.Path, files: dict[str, bytes]) -> None:
  """Writes every file into a temporary sibling, then renames it into place
  (which fails if ``dst`` has become non-empty): an interrupted or failed
  run leaves no partial output."""
  try:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{dst.name}.partial-', dir=dst.parent)
  except OSError as e:
    raise CompressionError(f'cannot write into {dst.parent} ({e}); give '
                           'another output folder.') from e
  try:
    for name, data in files.items():
      if os.path.basename(name) != name or name.startswith('.'):
        raise CompressionError(f'refusing to write {name!r}: not a plain '
                               'file name.')
      path = os.path.join(tmp, name)
      with open(path, 'xb') as f:
        f.write(data)
      _readable(path)
    _readable(tmp)
    try:
      os.rename(tmp, dst)   # onto an empty folder, or fails
    except OSError as e:
      raise CompressionError(f'cannot move the output into {dst} ({e}); '
                             'nothing was overwritten.') from e
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def write_file(dst: epath.Path, data: bytes) -> None:
  """Writes a temporary sibling, then links it to ``dst`` (which fails if
  ``dst`` has appeared meanwhile: nothing is overwritten)."""
  dst.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{dst.name}.partial-', dir=dst.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    _readable(tmp)
    try:
      os.link(tmp, dst)
    except FileExistsError:
      raise
    except OSError:   # no hard links here (FAT, some network mounts)
      with open(dst, 'xb') as f:   # ours from here on: removed if unfinished
        try:
          f.write(data)
        except BaseException:
          os.remove(dst)
          raise
  except FileExistsError as e:
    raise CompressionError(f'{dst} appeared while compressing; it was not '
                           'overwritten.') from e
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buf, format='PNG')
  return buf.getvalue()
