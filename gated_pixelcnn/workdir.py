"""The workdir: its layout, the one process that may write into it, and how
its files are replaced.

A workdir holds one run: ``checkpoints/``, TensorBoard event files,
``samples/``, ``config.json``, ``eval_results.json``, and two files of this
module's:

* ``.gated_pixelcnn``, the marker, written when a run first uses the folder.
  A folder that holds other files and no marker is somebody else's and is
  never written into (workdirs of runs older than the marker are recognised
  by their ``checkpoints/`` folder).
* ``.gated_pixelcnn.lock``, held by the one process that writes (process 0
  of a multi-host run). A second writer is refused with the first one's
  pid, host and command. On a local file system it is a ``flock``, which
  the kernel releases when the process exits or dies; on object stores
  (gs://) a file with a heartbeat that a live holder refreshes every minute,
  taken over when it is ten minutes old or its holder's pid on this host is
  gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator
import uuid

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from gated_pixelcnn import errors

MARKER = '.gated_pixelcnn'
LOCK = '.gated_pixelcnn.lock'
# What each name this project writes at the top of a workdir must be.
LAYOUT = {'checkpoints': 'folder', 'checkpoints_corrupt': 'folder',
          'samples': 'folder', 'config.json': 'file',
          'eval_results.json': 'file', MARKER: 'file', LOCK: 'file'}


class WorkdirError(errors.UserError, RuntimeError):
  """The workdir cannot be used as asked; the message says what to do."""


def is_local(workdir: str | os.PathLike) -> bool:
  return '://' not in os.fspath(workdir)


def resolve(workdir: str | os.PathLike) -> str:
  """An absolute path for a local workdir (Orbax and TensorStore need one;
  ``~`` expanded), the URL as it is for a remote one (gs://...)."""
  workdir = os.fspath(workdir)
  if not workdir:
    raise WorkdirError('--workdir is empty; give a folder for the run.')
  if not is_local(workdir):
    return workdir
  return os.path.abspath(os.path.expanduser(workdir))


def check_layout(workdir: str) -> None:
  """The workdir, if it exists, is a folder whose entries of the names this
  project writes have the right kind (a file named ``checkpoints`` would
  only fail at the first save)."""
  path = epath.Path(workdir)
  if path.exists() and not path.is_dir():
    raise WorkdirError(f'--workdir {workdir} is a file, not a folder; give a '
                       'folder (it is created if missing).')
  for name, kind in LAYOUT.items():
    entry = path / name
    if entry.exists() and entry.is_dir() != (kind == 'folder'):
      raise WorkdirError(
          f'{entry} is a {"folder" if kind == "file" else "file"}, but '
          f'gated_pixelcnn keeps its {name} in a {kind} of that name: move it '
          'elsewhere, or use another --workdir.')


def claim(workdir: str, create: bool = True) -> None:
  """Makes sure ``workdir`` is a workdir of this project: one with the
  marker, or of an older run (``checkpoints/``), which gets the marker; or,
  with ``create``, a new or empty folder, which becomes one. A folder with
  someone else's files is refused before anything is written."""
  check_layout(workdir)
  path = epath.Path(workdir)
  if (path / MARKER).exists():
    return
  entries = sorted(p.name for p in path.iterdir()) if path.exists() else []
  if not (path / 'checkpoints').is_dir():
    if not create:
      raise errors.CheckpointError(
          f'--workdir {workdir} holds no trained run (no checkpoints): train '
          'first (--mode=train), or point --workdir at a trained run.')
    if entries:
      shown = ', '.join(entries[:5]) + (', ...' if len(entries) > 5 else '')
      raise WorkdirError(
          f'--workdir {workdir} is a folder with other files ({shown}) and '
          f'not a gated_pixelcnn workdir (it has no {MARKER} file); nothing '
          'was written. Point --workdir at a new or empty folder, or at the '
          'workdir of an earlier run.')
  path.mkdir(parents=True, exist_ok=True)
  write_atomic(path / MARKER, json.dumps(
      {'what': 'gated_pixelcnn workdir', 'created': _now()}) + '\n')


def write_atomic(path: str | os.PathLike, text: str) -> None:
  """Replaces ``path`` by ``text`` all at once: readers, and a crash, see
  the old file or the new one, never a part."""
  path = epath.Path(path)
  tmp = path.parent / f'.{path.name}.{os.getpid()}.tmp'
  tmp.write_text(text)
  tmp.replace(path)


@contextlib.contextmanager
def writer(workdir: str, create: bool = True) -> Iterator[str]:
  """The one writer of ``workdir``: claims it (see `claim`) and holds its
  lock; yields the resolved path.

  With several processes, process 0 does both and every process raises the
  same WorkdirError if it cannot.
  """
  workdir = resolve(workdir)
  lock = None

  def take():
    nonlocal lock
    claim(workdir, create)
    lock = _lock_for(workdir)
    lock.acquire()

  _on_process_zero(take)
  try:
    yield workdir
  finally:
    if lock is not None:
      lock.release()


def _on_process_zero(fn: Callable[[], None]) -> None:
  """Runs ``fn`` on process 0; a WorkdirError it raises is raised on every
  process (the others would otherwise wait for it at the next collective)."""
  if jax.process_count() == 1:
    fn()
    return
  message = b''
  if jax.process_index() == 0:
    try:
      fn()
    except Exception as e:  # pylint: disable=broad-except
      message = (str(e) if isinstance(e, WorkdirError) else
                 f'{type(e).__name__}: {e}').encode()[:4096]
  buf = np.zeros(4096, np.uint8)
  buf[:len(message)] = np.frombuffer(message, np.uint8)
  message = bytes(multihost_utils.broadcast_one_to_all(buf)).rstrip(b'\0')
  if message:
    raise WorkdirError(message.decode(errors='replace'))


# ------------------------------------------------------------------ locks


def _now() -> str:
  return time.strftime('%Y-%m-%d %H:%M:%S %Z')


def _me() -> dict[str, Any]:
  return {'pid': os.getpid(), 'host': socket.gethostname(), 'started': _now(),
          'command': ' '.join(sys.argv), 'token': uuid.uuid4().hex,
          'heartbeat': time.time()}


def _describe(holder: dict[str, Any]) -> str:
  return (f'pid {holder.get("pid")} on {holder.get("host")}, started '
          f'{holder.get("started")}: {holder.get("command")}')


def _in_use(workdir: str, holder: dict[str, Any] | None) -> WorkdirError:
  who = f' ({_describe(holder)})' if holder else ''
  return WorkdirError(
      f'--workdir {workdir} is in use by another gated_pixelcnn process{who}. '
      'Two writers would overwrite each other\'s checkpoints and results: '
      'wait for it to finish, stop it (SIGTERM makes training save and '
      'exit), or use another --workdir.')


def _parse(text: str) -> dict[str, Any] | None:
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


def _alive_here(holder: dict[str, Any]) -> bool:
  """False if the holder ran on this host and its pid is gone."""
  if holder.get('host') != socket.gethostname():
    return True
  try:
    os.kill(int(holder.get('pid', -1)), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, OverflowError):
    return True
  return True


def _lock_for(workdir: str):
  path = epath.Path(workdir) / LOCK
  return FileLock(path) if is_local(workdir) else HeartbeatLock(path)


class FileLock:
  """An exclusive ``flock`` on a local file, released by the kernel when the
  process ends however it ends; the file holds the holder's description
  while held and is emptied on release, so a non-empty file found free was
  left by a process that died."""

  def __init__(self, path: epath.Path):
    self.path = path
    self._fd = None
    self._fallback = None

  def acquire(self) -> None:
    workdir = str(self.path.parent)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _parse(os.pread(fd, 1 << 16, 0).decode(errors='replace'))
      os.close(fd)
      raise _in_use(workdir, holder) from None
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        # A file system without flock (some network mounts): a heartbeat.
        self._fallback = HeartbeatLock(self.path)
        self._fallback.acquire()
        return
      raise WorkdirError(f'cannot lock {self.path} ({e}).') from e
    previous = _parse(os.pread(fd, 1 << 16, 0).decode(errors='replace'))
    if previous:
      logging.warning('%s was left locked by a process that is gone (%s): it '
                      'crashed or was killed; taking the workdir over.',
                      workdir, _describe(previous))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_me()).encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    if self._fallback is not None:
      self._fallback.release()
    elif self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
    self._fd = self._fallback = None


class HeartbeatLock:
  """A lock file whose holder refreshes its time every ``beat_s`` seconds;
  one ``stale_s`` old (or whose pid on this host is gone) is taken over.
  For object stores, which have no locks: a writer that started within
  ``settle_s`` of another is detected by reading the file back."""

  def __init__(self, path: epath.Path, beat_s: float = 60.0,
               stale_s: float = 600.0, settle_s: float = 2.0):
    self.path = path
    self.beat_s, self.stale_s, self.settle_s = beat_s, stale_s, settle_s
    self._me = None
    self._stop = threading.Event()
    self._thread = None

  def _read(self) -> dict[str, Any] | None:
    try:
      return _parse(self.path.read_text())
    except (FileNotFoundError, OSError):
      return None

  def acquire(self) -> None:
    workdir = str(self.path.parent)
    holder = self._read()
    if holder:
      age = time.time() - float(holder.get('heartbeat', 0))
      if age < self.stale_s and _alive_here(holder):
        raise _in_use(workdir, holder)
      logging.warning('%s holds a lock last refreshed %.0f s ago by a process '
                      'that is gone (%s); taking the workdir over.', workdir,
                      age, _describe(holder))
    self._me = _me()
    self.path.write_text(json.dumps(self._me))
    time.sleep(self.settle_s)
    holder = self._read()
    if not holder or holder.get('token') != self._me['token']:
      raise _in_use(workdir, holder)
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name='workdir-heartbeat')
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.beat_s):
      holder = self._read()
      if not holder or holder.get('token') != self._me['token']:
        logging.error('The lock of %s was taken by another process (%s); '
                      'this run no longer holds it.', self.path.parent,
                      _describe(holder) if holder else 'file removed')
        return
      self._me['heartbeat'] = time.time()
      try:
        self.path.write_text(json.dumps(self._me))
      except OSError as e:  # a transient store error: try again next beat
        logging.warning('Could not refresh %s: %s', self.path, e)

  def release(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None
    holder = self._read()
    if self._me and holder and holder.get('token') == self._me['token']:
      with contextlib.suppress(OSError):
        self.path.unlink()
    self._me = None
