"""One training worker of the Trainer step: `python -m components.training_worker --job JSON`.

Every worker, wherever it runs (a local process, a TFJob pod, a TrainJob node), runs TFX's
Trainer executor on the step's artifacts (`job_description`), so `run_fn` sees the same
`FnArgs` as in-process. Its `TF_CONFIG` comes from its launcher (local processes, the TFJob
operator) or, with `--cluster jobset` (Kubeflow Trainer v2 nodes, which get no TF_CONFIG), is
derived here from the JobSet pod's environment (`trainer.cluster.jobset_tf_config`).

A failed worker writes its error to `--error-file` (a pod's termination log) and exits with
EXIT_PEER_LOST when another worker was lost or unreachable (restarting the group may help),
EXIT_ERROR otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import logging

if TYPE_CHECKING:
  from tfx import types

# A worker exits with this code when it lost, or could not reach, another worker: the group
# may be restarted (the Training Operator's ExitCode policy restarts codes 128-255; Linux has
# no signal 72, so it is not mistaken for a worker killed by a signal, 128 + signal).
EXIT_PEER_LOST = 200
EXIT_ERROR = 1
WORKER_MODULE = 'components.training_worker'
TERMINATION_LOG = '/dev/termination-log'


class DistributedTrainingError(RuntimeError):
  """A training worker (local process or pod) failed; the message carries its error."""


def job_description(input_dict: Dict[str, List['types.Artifact']],
                    output_dict: Dict[str, List['types.Artifact']],
                    exec_properties: Dict[str, Any]) -> Dict[str, Any]:
  """The Trainer step's inputs, outputs and properties as JSON-able data (`worker_command`)."""
  from tfx.utils import json_utils  # pylint: disable=g-import-not-at-top
  def artifacts(d):
    return {key: [a.to_json_dict() for a in values] for key, values in d.items()}
  return {'input_dict': artifacts(input_dict), 'output_dict': artifacts(output_dict),
          'exec_properties': json.loads(json_utils.dumps(exec_properties))}



def _artifacts(d: Dict[str, List[Dict[str, Any]]]) -> Dict[str, List['types.Artifact']]:
  from tfx import types  # pylint: disable=g-import-not-at-top
  return {key: [types.Artifact.from_json_dict(a) for a in values] for key, values in d.items()}


def worker_command(job: Dict[str, Any], error_file: Optional[str] = None,
                   python: str = 'python', parent_pid: Optional[int] = None,
                   cluster: str = 'tf-config') -> List[str]:
  """The command a worker runs (a local process, a TFJob pod, a TrainJob node). TF_CONFIG
  comes from the environment, or with `cluster='jobset'` is derived from the JobSet pod's.
  With `parent_pid` (local workers) the worker ends when that process is gone."""
  command = [python, '-m', WORKER_MODULE, '--job', json.dumps(job, sort_keys=True)]
  if cluster != 'tf-config':
    command += ['--cluster', cluster]
  if error_file:
    command += ['--error-file', error_file]
  if parent_pid:
    command += ['--parent-pid', str(parent_pid)]
  return command


def _exit_with_parent(parent_pid: int) -> None:
  """Ends this worker when the launcher is gone (killed with the whole run), rather than
  training on alone."""
  def watch() -> None:
    while os.getppid() == parent_pid:
      time.sleep(1.0)
    sys.stderr.write(f'the launcher (pid {parent_pid}) is gone; this worker stops\n')
    sys.stderr.flush()
    os._exit(EXIT_ERROR)  # pylint: disable=protected-access
  threading.Thread(target=watch, name='parent-watch', daemon=True).start()


def exit_code(error: BaseException) -> int:
  """A failed worker's exit code: EXIT_PEER_LOST when another worker is gone or unreachable
  (this worker is fine; restarting the group may help), else EXIT_ERROR."""
  from trainer.cluster import ClusterConfigError, ClusterStartError  # pylint: disable=g-import-not-at-top
  if isinstance(error, (ClusterStartError, ClusterConfigError)):
    return EXIT_PEER_LOST if isinstance(error, ClusterStartError) else EXIT_ERROR
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
          tf.errors.CancelledError)
  return EXIT_PEER_LOST if isinstance(error, lost) else EXIT_ERROR


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Worker entry point: `python -m components.training_worker --job JSON`."""
  parser = argparse.ArgumentParser(description='one training worker of the Trainer step')
  parser.add_argument('--job', required=True, help='JSON from job_description()')
  parser.add_argument('--error-file', help='where to write the error if the worker fails')
  parser.add_argument('--parent-pid', type=int, help='end when this process is gone')
  parser.add_argument('--cluster', choices=('tf-config', 'jobset'), default='tf-config',
                      help='where the cluster comes from: TF_CONFIG as set by the launcher, '
                           'or derived from the JobSet pod (Kubeflow Trainer v2)')
  args = parser.parse_args(argv)
  if args.parent_pid:
    _exit_with_parent(args.parent_pid)
  logging.set_verbosity(logging.INFO)
  code = 0
  try:
    if args.cluster == 'jobset':
      from trainer import cluster  # pylint: disable=g-import-not-at-top
      os.environ['TF_CONFIG'] = cluster.jobset_tf_config(os.environ)
      logging.info('TF_CONFIG from the JobSet pod: %s', os.environ['TF_CONFIG'])
      cluster.parse_tf_config(os.environ['TF_CONFIG'])  # checked before anything runs
    job = json.loads(args.job)
    # Imported only now: a pod that cannot join its cluster fails in a second, not after
    # TensorFlow and TFX have loaded.
    from tfx.components.trainer import executor as trainer_executor  # pylint: disable=g-import-not-at-top
    trainer_executor.GenericExecutor().Do(_artifacts(job['input_dict']),
                                          _artifacts(job['output_dict']),
                                          job['exec_properties'])
  except BaseException as e:  # pylint: disable=broad-except
    code = exit_code(e)
    traceback.print_exc()
    message = f'{type(e).__name__}: {e}'.strip()
    if args.error_file:
      try:
        with open(args.error_file, 'w') as f:
          f.write(message[-4000:])  # Kubernetes keeps at most 4 KiB of a termination message
      except OSError:
        pass
  sys.stdout.flush()
  sys.stderr.flush()
  # Exit now: TensorFlow's cluster threads can otherwise hold the process after training.
  os._exit(code)  # pylint: disable=protected-access


if __name__ == '__main__':
  main()
