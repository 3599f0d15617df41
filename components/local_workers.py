"""Local training workers: `training.workers` processes on 127.0.0.1, each with a free port and
its own `TF_CONFIG`, talking over gRPC; restarted as a group when one is lost or killed
(docs/distributed.md, "Local workers")."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import logging

from components.training_worker import (EXIT_PEER_LOST, DistributedTrainingError,
                                        worker_command)
from pipeline.config import TrainingConfig

_POLL_SECONDS = 0.2
_STOP_GRACE_SECONDS = 5.0
_TAIL_LINES = 10



@dataclasses.dataclass
class WorkerGroupResult:
  """What a local worker group did: how many starts it took, why it was restarted, and each
  worker's output lines in the last start."""
  starts: int
  restarts_because: List[str]
  outputs: List[List[str]]


def free_ports(count: int) -> List[int]:
  """`count` distinct ports free on 127.0.0.1 now (held together while picked)."""
  sockets = []
  try:
    for _ in range(count):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind(('127.0.0.1', 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def local_tf_configs(ports: Sequence[int]) -> List[Dict[str, Any]]:
  """One TF_CONFIG per worker of a cluster on 127.0.0.1 (worker 0 is the chief)."""
  cluster = {'worker': [f'127.0.0.1:{port}' for port in ports]}
  return [{'cluster': cluster, 'task': {'type': 'worker', 'index': i}}
          for i in range(len(ports))]


def _project_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Worker:
  """One worker process and a thread forwarding its output, prefixed, to our stderr. It stays
  in our process group, so whatever ends the whole run (Ctrl-C, a kill of the group) ends it
  too; and it exits by itself if we are gone (`--parent-pid`)."""

  def __init__(self, index: int, count: int, command: List[str], env: Dict[str, str],
               error_file: str):
    self.index = index
    self.name = f'worker {index} of {count}'
    self.error_file = error_file
    self.lines: List[str] = []
    self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
    self._forward = threading.Thread(target=self._read, name=f'worker-{index}-output',
                                     daemon=True)
    self._forward.start()

  def _read(self) -> None:
    for raw in iter(self.process.stdout.readline, b''):
      line = raw.decode('utf-8', 'replace').rstrip('\n')
      self.lines.append(line)
      try:
        sys.stderr.write(f'[worker {self.index}] {line}\n')
      except (ValueError, OSError):  # our stderr went away; keep collecting
        pass

  def stop(self) -> None:
    """Ends the worker: SIGTERM, then SIGKILL after a grace period (a worker blocked inside
    TensorFlow does not always act on SIGTERM)."""
    for end, wait in ((self.process.terminate, _STOP_GRACE_SECONDS), (self.process.kill, 30.0)):
      if self.process.poll() is not None:
        break
      end()
      try:
        self.process.wait(timeout=wait)
      except subprocess.TimeoutExpired:
        continue
    self._forward.join(timeout=10.0)

  @property
  def retryable(self) -> bool:
    code = self.process.returncode
    return code is not None and (code < 0 or code >= 128)

  def describe_failure(self) -> str:
    code = self.process.returncode
    if code < 0:
      how = f'was killed by {signal.Signals(-code).name}'
    elif code == EXIT_PEER_LOST:
      how = 'lost or could not reach another worker'
    else:
      how = f'failed (exit code {code})'
    error = ''
    if os.path.exists(self.error_file):
      with open(self.error_file) as f:
        error = f.read().strip()
    if not error:
      tail = [line for line in self.lines if line.strip()][-_TAIL_LINES:]
      error = 'last output:\n  ' + '\n  '.join(tail) if tail else 'no output'
    return f'{self.name} {how}: {error}'


def run_local_workers(job: Dict[str, Any], num_workers: int, training: TrainingConfig,
                      python: str = sys.executable,
                      env: Optional[Dict[str, str]] = None) -> WorkerGroupResult:
  """Runs `num_workers` worker processes on 127.0.0.1 until all succeed; see the module
  docstring for restarts and failures. Raises DistributedTrainingError."""
  base_env = dict(os.environ if env is None else env)
  base_env['TF_USE_LEGACY_KERAS'] = '1'
  base_env['PYTHONPATH'] = os.pathsep.join(
      [_project_root()] + [p for p in base_env.get('PYTHONPATH', '').split(os.pathsep) if p])
  restarts_because: List[str] = []
  with tempfile.TemporaryDirectory(prefix='mtl-workers-') as scratch:
    for start in range(1, training.worker_restarts + 2):
      ports = free_ports(num_workers)
      workers = []
      for i, tf_config in enumerate(local_tf_configs(ports)):
        error_file = os.path.join(scratch, f'start{start}-worker{i}.error')
        worker_env = dict(base_env, TF_CONFIG=json.dumps(tf_config))
        command = worker_command(job, error_file, python, parent_pid=os.getpid())
        workers.append(_Worker(i, num_workers, command, worker_env, error_file))
      logging.info('started %d training workers on 127.0.0.1 ports %s (start %d)',
                   num_workers, ', '.join(map(str, ports)), start)
      try:
        failed = _wait(workers)
      finally:
        for worker in workers:
          worker.stop()
      if failed is None:
        return WorkerGroupResult(start, restarts_because, [w.lines for w in workers])
      message = failed.describe_failure()
      if not failed.retryable or start > training.worker_restarts:
        if failed.retryable:
          message += (f' (after {training.worker_restarts} restart(s) of the workers; '
                      'training.worker_restarts)')
        raise DistributedTrainingError(message)
      restarts_because.append(message)
      logging.warning('%s; restarting all %d workers, to resume from the last backup '
                      '(restart %d of at most %d)', message, num_workers, start,
                      training.worker_restarts)
  raise AssertionError('unreachable')


def _wait(workers: List[_Worker]) -> Optional[_Worker]:
  """Waits until every worker exited 0 (returns None) or one failed (returns it; when several
  failed at once, one that did not merely lose a peer)."""
  while True:
    codes = [w.process.poll() for w in workers]
    failed = [w for w, code in zip(workers, codes) if code not in (None, 0)]
    if failed:
      failed.sort(key=lambda w: w.process.returncode == EXIT_PEER_LOST)
      return failed[0]
    if all(code == 0 for code in codes):
      return None
    time.sleep(_POLL_SECONDS)
