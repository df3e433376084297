"""The workdir: its layout, the one process that trains in it, and how its
files are replaced.

A workdir holds one run: ``checkpoints/``, TensorBoard event files,
``samples/``, ``config.json``, ``eval_results.json``, and two files of this
module's:

* ``.gated_pixelcnn``, the marker, written when a run first uses the folder.
  A folder that holds other files and no marker is somebody else's and is
  never written into (workdirs of runs older than the marker are recognised
  by their Orbax checkpoints and nothing but this project's files).
* ``.gated_pixelcnn.lock``, held by the process that trains (process 0 of a
  multi-host run). A second training run is refused with the first one's
  pid, host and command; a --mode job finding it held reads the checkpoints
  without moving any and leaves the run's own files alone. On a local file
  system the lock is a ``flock``, which the kernel releases when the process
  exits or dies; on object stores (gs://) a file with a heartbeat that a live
  holder refreshes every minute, taken over when it is ten minutes old or
  its holder's process on this machine is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
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
_EVENTS = re.compile(r'events\.out\.tfevents\..*|plugins')


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


def _is_older_workdir(path: epath.Path, entries: list[str]) -> bool:
  """A workdir of a run older than the marker: Orbax step folders in
  checkpoints/ and nothing at the top but what this project writes."""
  checkpoints = path / 'checkpoints'
  if not checkpoints.is_dir():
    return False
  steps = [p for p in checkpoints.iterdir()
           if p.name.isdigit() and (p / '_CHECKPOINT_METADATA').exists()]
  return bool(steps) and all(e in LAYOUT or _EVENTS.fullmatch(e)
                             for e in entries)


def claim(workdir: str, create: bool = True) -> None:
  """Makes sure ``workdir`` is a workdir of this project: one with the
  marker, or of an older run, which gets the marker; or, with ``create``, a
  new or empty folder, which becomes one. A folder with someone else's
  files is refused before anything is written."""
  check_layout(workdir)
  path = epath.Path(workdir)
  if (path / MARKER).exists():
    return
  entries = sorted(p.name for p in path.iterdir()) if path.exists() else []
  if not _is_older_workdir(path, entries):
    if entries:
      shown = ', '.join(entries[:5]) + (', ...' if len(entries) > 5 else '')
      raise WorkdirError(
          f'--workdir {workdir} is a folder with other files ({shown}) and '
          f'not a gated_pixelcnn workdir (it has no {MARKER} file); nothing '
          'was written. Point --workdir at a new or empty folder, or at the '
          'workdir of an earlier run.')
    if not create:
      raise errors.CheckpointError(
          f'--workdir {workdir} holds no trained run (no checkpoints): train '
          'first (--mode=train), or point --workdir at a trained run.')
  path.mkdir(parents=True, exist_ok=True)
  write_atomic(path / MARKER, json.dumps(
      {'what': 'gated_pixelcnn workdir', 'created': _now()}) + '\n')


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Replaces ``path`` by ``data`` all at once: readers, and a crash, see
  the old file or the new one, never a part."""
  path = epath.Path(path)
  tmp = path.parent / f'.{path.name}.{os.getpid()}.tmp'
  if isinstance(data, bytes):
    tmp.write_bytes(data)
  else:
    tmp.write_text(data)
  tmp.replace(path)


# The lock of the workdir this process trains in, checked by the loop.
_HELD: list[Any] = []


@contextlib.contextmanager
def writer(workdir: str) -> Iterator[str]:
  """The training run of ``workdir``: claims it (creating it if missing)
  and holds its lock; yields the resolved path. Raises WorkdirError, on
  every process, if another process holds the lock."""
  workdir = resolve(workdir)
  lock = None

  def take():
    nonlocal lock
    claim(workdir, create=True)
    lock = _lock_for(workdir)
    lock.acquire()
    return ''

  _on_process_zero(take)
  _HELD.append(lock)
  try:
    yield workdir
  finally:
    _HELD.remove(lock)
    if lock is not None:
      lock.release()


@contextlib.contextmanager
def job(workdir: str) -> Iterator[tuple[str, bool]]:
  """A --mode job on a trained run: yields (resolved path, alone). If a
  training run holds the workdir, ``alone`` is False: the job must read the
  checkpoints without moving any and leave the run's own files (config,
  eval_results.json) to it; its outputs are named by step."""
  workdir = resolve(workdir)
  lock = None

  def take():
    nonlocal lock
    claim(workdir, create=False)
    candidate = _lock_for(workdir)
    try:
      candidate.acquire()
    except WorkdirError as e:
      logging.info('%s Reading its checkpoints without changing them.',
                   str(e).split(' Two writers')[0])
      return 'shared'
    lock = candidate
    return ''

  alone = _on_process_zero(take) != 'shared'
  try:
    yield workdir, alone
  finally:
    if lock is not None:
      lock.release()


def check_still_held() -> None:
  """Raises WorkdirError if another process took over the lock of the
  workdir this process trains in (the heartbeat of a gs:// lock saw
  another holder): it must stop writing."""
  for lock in _HELD:
    if lock is not None and lock.lost:
      raise WorkdirError(
          f'another process took over {lock.path} while this run held it '
          '(the heartbeat could not be refreshed for longer than the '
          'staleness limit): stopped without saving, so as not to mix the '
          'two runs\' checkpoints.')


def _on_process_zero(fn: Callable[[], str]) -> str:
  """Runs ``fn`` on process 0 and returns its (short) result everywhere; an
  error it raises is raised on every process (the others would otherwise
  wait for it at the next collective). OSErrors (a folder that cannot be
  created or written) become WorkdirErrors."""

  def run():
    try:
      return fn()
    except OSError as e:
      raise WorkdirError(
          f'the workdir cannot be created or written ({type(e).__name__}: '
          f'{e}); give a --workdir in a folder you can write to.') from e

  if jax.process_count() == 1:
    return run()
  message, status = b'', b''
  if jax.process_index() == 0:
    try:
      status = run().encode()
    except Exception as e:  # pylint: disable=broad-except
      message = (str(e) if isinstance(e, errors.UserError) else
                 f'{type(e).__name__}: {e}').encode()[:4000]
  buf = np.zeros(4096, np.uint8)
  if message:
    buf[0] = 1
    buf[1:1 + len(message)] = np.frombuffer(message, np.uint8)
  else:
    buf[1:1 + len(status)] = np.frombuffer(status, np.uint8)
  buf = multihost_utils.broadcast_one_to_all(buf)
  text = bytes(buf[1:]).rstrip(b'\0').decode(errors='replace')
  if buf[0]:
    raise WorkdirError(text)
  return text


# ------------------------------------------------------------------ locks


def _now() -> str:
  return time.strftime('%Y-%m-%d %H:%M:%S %Z')


def _boot_id() -> str:
  try:
    with open('/proc/sys/kernel/random/boot_id') as f:
      return f.read().strip()
  except OSError:
    return ''


def _me(clock: Callable[[], float] = time.time) -> dict[str, Any]:
  return {'pid': os.getpid(), 'host': socket.gethostname(),
          'boot_id': _boot_id(), 'started': _now(),
          'command': ' '.join(sys.argv), 'token': uuid.uuid4().hex,
          'heartbeat': clock()}


def _describe(holder: dict[str, Any]) -> str:
  return (f'pid {holder.get("pid")} on {holder.get("host")}, started '
          f'{holder.get("started")}: {holder.get("command")}')


def _in_use(workdir: str, holder: dict[str, Any] | None) -> WorkdirError:
  who = f' ({_describe(holder)})' if holder else ''
  return WorkdirError(
      f'--workdir {workdir} is in use by another gated_pixelcnn process{who}.'
      ' Two writers would overwrite each other\'s checkpoints and results: '
      'wait for it to finish, stop it (SIGTERM makes training save and '
      'exit), or use another --workdir.')


def _parse(text: str) -> dict[str, Any] | None:
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


# Tokens of the heartbeat locks this process holds.
_TOKENS_HERE: set[str] = set()


def _gone(holder: dict[str, Any]) -> bool:
  """The holder ran on this machine and its process is gone (or had this
  process's pid without being one of its locks: a container restarted with
  the same pid)."""
  if holder.get('host') != socket.gethostname():
    return False
  boot = holder.get('boot_id')
  if boot and _boot_id() and boot != _boot_id():
    return True   # the machine rebooted since
  try:
    pid = int(holder.get('pid', -1))
    if pid == os.getpid():
      return holder.get('token') not in _TOKENS_HERE
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except (PermissionError, ValueError, TypeError, OverflowError):
    return False
  return False


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
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
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

  @property
  def lost(self) -> bool:
    """A flock cannot be taken away; the heartbeat fallback's can."""
    return self._fallback is not None and self._fallback.lost

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
  one ``stale_s`` old (or whose process on this machine is gone) is taken
  over. For object stores, which have no locks: a writer that started
  within ``settle_s`` of another is detected by reading the file back. A
  refresh that fails is retried at the next beat; only another holder's
  token in the file (or the file gone) means the lock was lost."""

  def __init__(self, path: epath.Path, beat_s: float = 60.0,
               stale_s: float = 600.0, settle_s: float = 2.0,
               clock: Callable[[], float] = time.time):
    self.path = path
    self.beat_s, self.stale_s, self.settle_s = beat_s, stale_s, settle_s
    self.clock = clock
    self.lost = False
    self._me = None
    self._stop = threading.Event()
    self._thread = None

  def _read(self) -> dict[str, Any] | None:
    """The holder's record; None if there is no lock file. Other errors
    (a store that is briefly unavailable) propagate."""
    try:
      return _parse(self.path.read_text())
    except FileNotFoundError:
      return None

  def acquire(self) -> None:
    workdir = str(self.path.parent)
    holder = self._read()
    if holder:
      try:
        age = self.clock() - float(holder.get('heartbeat'))
      except (TypeError, ValueError):
        age = float('inf')   # an unreadable record: as good as stale
      if age < self.stale_s and not _gone(holder):
        raise _in_use(workdir, holder)
      logging.warning('%s holds a lock last refreshed %.0f s ago by a process '
                      'that is gone (%s); taking the workdir over.', workdir,
                      age, _describe(holder))
    self._me = _me(self.clock)
    self.path.write_text(json.dumps(self._me))
    time.sleep(self.settle_s)
    holder = self._read()
    if not holder or holder.get('token') != self._me['token']:
      raise _in_use(workdir, holder)
    self.lost = False
    _TOKENS_HERE.add(self._me['token'])
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name='workdir-heartbeat')
    self._thread.start()

  def beat_once(self) -> None:
    """Refreshes the heartbeat, or marks the lock lost if another process
    holds it now; a store error is logged and left to the next beat."""
    try:
      holder = self._read()
      if not holder or holder.get('token') != self._me['token']:
        self.lost = True
        logging.error('The lock of %s was taken by another process (%s); '
                      'this run no longer holds it.', self.path.parent,
                      _describe(holder) if holder else 'the file is gone')
        return
      self._me['heartbeat'] = self.clock()
      self.path.write_text(json.dumps(self._me))
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Could not refresh %s (%s: %s); trying again in %.0f s.',
                      self.path, type(e).__name__, e, self.beat_s)

  def _beat(self) -> None:
    while not self._stop.wait(self.beat_s) and not self.lost:
      self.beat_once()

  def release(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join(timeout=30)   # a daemon: never holds the exit
      self._thread = None
    with contextlib.suppress(Exception):
      holder = self._read()
      if self._me and holder and holder.get('token') == self._me['token']:
        self.path.unlink()
    if self._me:
      _TOKENS_HERE.discard(self._me['token'])
    self._me = None
