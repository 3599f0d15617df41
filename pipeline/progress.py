"""Readable progress for a local run: which component runs, for how long, and the Trainer's epoch.

TFX's local runner logs `Component X is running.` / `is finished.` (and the launcher `A cached
execution N is used.` / `Execution N failed.`) through absl. `Progress` is a logging handler
that turns those into one line per component on the terminal, while everything else (TFX, Beam,
TensorFlow, Keras) goes to the run's log file: `quiet_output` points the process's stdout and
stderr (the file descriptors, so C++ logs follow) at that file for the duration of the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from typing import IO, Iterator, Optional

_RUNNING = re.compile(r'^Component (\S+) is running\.$')
_FINISHED = re.compile(r'^Component (\S+) is finished\.$')
_CACHED = re.compile(r'^A cached execution \d+ is used\.$')
_FAILED = re.compile(r'^Execution \d+ failed\.$')
_EPOCH = re.compile(rb'Epoch (\d+)/(\d+)')
_RECREATING = re.compile(r'^Re-creating ')  # pipeline/artifact_files.py


@contextlib.contextmanager
def quiet_output(log_path: str) -> Iterator[IO[str]]:
  """Sends fds 1 and 2 to `log_path` (appending) and yields a stream to the real terminal."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved_out, saved_err = os.dup(1), os.dup(2)
  log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  terminal = os.fdopen(os.dup(saved_out), 'w', buffering=1)
  os.dup2(log_fd, 1)
  os.dup2(log_fd, 2)
  try:
    yield terminal
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved_out, 1)
    os.dup2(saved_err, 2)
    for fd in (saved_out, saved_err, log_fd):
      os.close(fd)
    terminal.close()


class Progress(logging.Handler):
  """Prints `  <component>  <state>  <seconds>` lines as components finish, and, while one
  runs, its elapsed time (and the Trainer's epoch, read from the log file) every few seconds."""

  def __init__(self, out: IO[str], log_path: Optional[str] = None, tick_seconds: float = 15.0):
    super().__init__(level=logging.INFO)
    self._out = out
    self._log_path = log_path
    self._tick = tick_seconds
    self._lock = threading.Lock()
    self._component: Optional[str] = None
    self._started = 0.0
    self._next_tick = tick_seconds
    self._state = 'done'
    self._log_offset = 0
    self._epoch = ''
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._ticker, daemon=True)
    self.finished = []  # (component, state, seconds)

  def __enter__(self) -> 'Progress':
    logging.getLogger('absl').addHandler(self)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join(timeout=2)
    logging.getLogger('absl').removeHandler(self)

  def emit(self, record: logging.LogRecord) -> None:
    try:
      message = record.getMessage()
    except Exception:  # pylint: disable=broad-except
      return
    with self._lock:
      match = _RUNNING.match(message)
      if match:
        self._component, self._started, self._state, self._epoch = (
            match.group(1), time.time(), 'done', '')
        self._next_tick = self._tick
        if self._log_path and os.path.exists(self._log_path):
          self._log_offset = os.path.getsize(self._log_path)
        self._print(f'  {match.group(1):<24} running ...')
        return
      if _RECREATING.match(message):
        self._print(f'  {message}')
      elif _CACHED.match(message):
        self._state = 'cached'
      elif _FAILED.match(message) and self._component:
        seconds = time.time() - self._started
        self.finished.append((self._component, 'FAILED', seconds))
        self._print(f'  {self._component:<24} {"FAILED":<7} {seconds:7.1f} s')
        self._component = None
      elif _FINISHED.match(message) and self._component:
        seconds = time.time() - self._started
        self.finished.append((self._component, self._state, seconds))
        self._print(f'  {self._component:<24} {self._state:<7} {seconds:7.1f} s')
        self._component = None

  def _print(self, line: str) -> None:
    self._out.write(line + '\n')
    self._out.flush()

  def _trainer_epoch(self) -> str:
    """The last `Epoch k/N` Keras wrote to the log since the component started."""
    if not self._log_path or not os.path.exists(self._log_path):
      return ''
    with open(self._log_path, 'rb') as f:
      f.seek(self._log_offset)
      matches = _EPOCH.findall(f.read())
    if matches:
      done, total = matches[-1]
      self._epoch = f', epoch {int(done)}/{int(total)}'
    return self._epoch

  def _ticker(self) -> None:
    """Every `tick_seconds` of a component's run, one line with its elapsed time."""
    while not self._stop.wait(0.5):
      with self._lock:
        if not self._component:
          continue
        elapsed = time.time() - self._started
        if elapsed >= self._next_tick:
          self._next_tick += self._tick
          self._print(f'  {self._component:<24} ... {elapsed:5.0f} s{self._trainer_epoch()}')
