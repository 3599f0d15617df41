"""The training cluster: TF_CONFIG, checked before TensorFlow sees it; every worker reachable
(bounded in time) before MultiWorkerMirroredStrategy joins them; the strategy.

A worker gets its TF_CONFIG from whoever started it: the Trainer's local launcher
(components/local_workers.py), the Kubeflow Training Operator (TFJob), or, on Kubeflow Trainer
v2, the worker itself from its JobSet pod's environment (`jobset_tf_config`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Tuple

from absl import logging

if TYPE_CHECKING:
  import tensorflow as tf

from pipeline.config import TrainingConfig

_CLUSTER_JOBS = ('chief', 'worker')  # what MultiWorkerMirroredStrategy trains with
TF_PORT = 2222  # every pod's cluster port (the Training Operator's default TF port)

# A Kubeflow Trainer v2 node gets no TF_CONFIG. What it has (docs/distributed.md): its index in
# the Indexed Job (JOB_COMPLETION_INDEX, set by Kubernetes); the labels JobSet puts on every
# pod, as environment variables through the downward API (the project's runtime,
# deploy/trainer-runtime.yaml, maps them); the node count from the TrainJob (MTL_NUM_NODES).
# Environment variable -> JobSet pod label (jobset-controller: jobset_controller.go).
JOBSET_ENV = {
    'JOBSET_NAME': 'jobset.sigs.k8s.io/jobset-name',
    'JOBSET_REPLICATED_JOB': 'jobset.sigs.k8s.io/replicatedjob-name',
    'JOBSET_JOB_INDEX': 'jobset.sigs.k8s.io/job-index',
}


class ClusterConfigError(ValueError):
  """TF_CONFIG does not describe a usable training cluster; the message says what is wrong."""


class ClusterStartError(RuntimeError):
  """The workers could not all be reached (or this worker cannot listen on its port)."""


@dataclasses.dataclass(frozen=True)
class TrainingCluster:
  """The workers TF_CONFIG names, in MultiWorkerMirroredStrategy's order (the chief first, if
  there is one), and which of them this process is."""
  names: Tuple[str, ...]       # 'chief 0', 'worker 0', 'worker 1', ...
  addresses: Tuple[str, ...]   # 'host:port', one per name
  worker_id: int               # this process: an index into names and addresses

  @property
  def num_workers(self) -> int:
    return len(self.addresses)

  @property
  def is_chief(self) -> bool:
    """The chief task, or worker 0 without one (as MultiWorkerMirroredStrategy decides)."""
    return self.worker_id == 0

  @property
  def name(self) -> str:
    return self.names[self.worker_id]

  @property
  def address(self) -> str:
    return self.addresses[self.worker_id]


def _split_address(address: str) -> Tuple[str, int]:
  host, _, port = address.rpartition(':')
  return host.strip('[]'), int(port)


def parse_tf_config(text: Optional[str]) -> Optional[TrainingCluster]:
  """The cluster TF_CONFIG describes, or None when it names at most one worker (or is unset).

  Raises ClusterConfigError naming the problem: not JSON, task types other than chief and
  worker, a malformed address, a missing task, or a task that is not in the cluster.
  """
  if not text or not text.strip():
    return None
  try:
    tf_config = json.loads(text)
  except ValueError as e:
    raise ClusterConfigError(f'TF_CONFIG is not valid JSON ({e}): {text[:200]!r}') from None
  if not isinstance(tf_config, dict):
    raise ClusterConfigError('TF_CONFIG must be a JSON object with "cluster" and "task", got '
                             f'{text[:200]!r}')
  cluster = tf_config.get('cluster') or {}
  if not isinstance(cluster, dict):
    raise ClusterConfigError(f'TF_CONFIG "cluster" must map task types to address lists, got '
                             f'{cluster!r}')
  others = sorted(set(cluster) - set(_CLUSTER_JOBS))
  if others:
    raise ClusterConfigError(
        f'TF_CONFIG cluster has {", ".join(others)} tasks; MultiWorkerMirroredStrategy trains '
        'with chief and worker tasks only')
  names: List[str] = []
  addresses: List[str] = []
  for job in _CLUSTER_JOBS:
    tasks = cluster.get(job, [])
    if not isinstance(tasks, list) or not all(isinstance(a, str) for a in tasks):
      raise ClusterConfigError(f'TF_CONFIG cluster.{job} must be a list of "host:port" '
                               f'addresses, got {tasks!r}')
    if job == 'chief' and len(tasks) > 1:
      raise ClusterConfigError(f'TF_CONFIG cluster.chief has {len(tasks)} addresses; there is '
                               'at most one chief')
    for i, address in enumerate(tasks):
      host, _, port = address.rpartition(':')
      if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterConfigError(f'TF_CONFIG cluster.{job}[{i}]: {address!r} is not a '
                                 '"host:port" address')
      if address in addresses:
        raise ClusterConfigError(f'TF_CONFIG cluster.{job}[{i}]: {address!r} is listed twice')
      names.append(f'{job} {i}')
      addresses.append(address)
  task = tf_config.get('task')
  if task is None:
    if len(addresses) > 1:
      raise ClusterConfigError(f'TF_CONFIG names {len(addresses)} workers but has no "task" '
                               'saying which of them this process is')
    return None
  if not isinstance(task, dict):
    raise ClusterConfigError(f'TF_CONFIG "task" must be {{"type": ..., "index": ...}}, got '
                             f'{task!r}')
  task_type, index = task.get('type'), task.get('index')
  if task_type not in cluster:
    raise ClusterConfigError(f'TF_CONFIG task.type {task_type!r} is not a task type of the '
                             f'cluster ({", ".join(sorted(cluster)) or "none"})')
  if isinstance(index, bool) or not isinstance(index, int):
    raise ClusterConfigError(f'TF_CONFIG task.index must be an integer (which {task_type} this '
                             f'process is), got {index!r}')
  if not 0 <= index < len(cluster[task_type]):
    raise ClusterConfigError(f'TF_CONFIG task.index {index} is out of range: cluster.'
                             f'{task_type} has {len(cluster[task_type])} address(es)')
  if len(addresses) <= 1:
    return None
  return TrainingCluster(tuple(names), tuple(addresses), names.index(f'{task_type} {index}'))


def jobset_tf_config(environ: Mapping[str, str]) -> str:
  """The TF_CONFIG of a Kubeflow Trainer v2 node, derived from its JobSet pod's environment.

  JobSet gives pod i of job j of replicated job r a stable DNS name,
  `<jobset>-<r>-<j>-<i>.<subdomain>` (the subdomain is the JobSet's name unless the runtime
  names another; Trainer v2 builds its endpoints the same way, plugins/jobset/jobset.go), on
  a headless Service that publishes pods before they are ready. So worker i of N is
  `<jobset>-<r>-<j>-<i>.<jobset>:TF_PORT`; this pod is worker JOB_COMPLETION_INDEX; worker 0
  is the chief. Raises ClusterConfigError naming a missing or malformed variable.
  """
  def get(name: str) -> str:
    value = (environ.get(name) or '').strip()
    if not value:
      raise ClusterConfigError(
          f'{name} is not set: a Kubeflow Trainer node derives its TF_CONFIG from '
          f'{", ".join(["JOB_COMPLETION_INDEX", "MTL_NUM_NODES", *JOBSET_ENV])} '
          '(the runtime in deploy/trainer-runtime.yaml and the TrainJob set them)')
    return value

  def number(name: str) -> int:
    value = get(name)
    if not value.isdigit():
      raise ClusterConfigError(f'{name} must be a non-negative integer, not {value!r}')
    return int(value)

  jobset, replicated_job = get('JOBSET_NAME'), get('JOBSET_REPLICATED_JOB')
  job_index, index, nodes = (number('JOBSET_JOB_INDEX'), number('JOB_COMPLETION_INDEX'),
                             number('MTL_NUM_NODES'))
  if not index < nodes:
    raise ClusterConfigError(f'JOB_COMPLETION_INDEX {index} is not below MTL_NUM_NODES {nodes}')
  workers = [f'{jobset}-{replicated_job}-{job_index}-{i}.{jobset}:{TF_PORT}'
             for i in range(nodes)]
  return json.dumps({'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': index}})


def wait_for_workers(cluster: TrainingCluster, timeout_seconds: float) -> None:
  """Returns once every other worker accepts connections on its cluster port; raises
  ClusterStartError naming those that did not within `timeout_seconds`.

  Why: while creating the strategy, TensorFlow waits for missing workers for up to an hour, and
  holds the GIL meanwhile, so nothing in the process can cut that short. So first, each worker
  listens on its own port with a plain socket and connects to every other worker's port; once
  all answered, it closes its socket and TensorFlow's server takes the port. A worker that got
  there first is reachable on the same port through TensorFlow's server, so no one waits for a
  worker that is up.
  """
  _, port = _split_address(cluster.address)
  listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    listener.bind(('', port))
  except OSError as e:
    listener.close()
    raise ClusterStartError(f'{cluster.name} cannot listen on port {port} (its address in '
                            f'TF_CONFIG is {cluster.address}): {e}') from None
  listener.listen(64)
  listener.settimeout(0.2)
  stop = threading.Event()

  def answer() -> None:
    while not stop.is_set():
      try:
        connection, _ = listener.accept()
      except socket.timeout:
        continue
      except OSError:
        return
      # Let the caller close first, so the port is left without connections in TIME_WAIT.
      connection.settimeout(2.0)
      with contextlib.suppress(OSError):
        connection.recv(1)
      connection.close()

  answering = threading.Thread(target=answer, name='cluster-port', daemon=True)
  answering.start()
  pending = {i for i in range(cluster.num_workers) if i != cluster.worker_id}
  errors: Dict[int, str] = {}
  deadline = time.monotonic() + timeout_seconds
  try:
    while pending:
      for i in sorted(pending):
        try:
          socket.create_connection(_split_address(cluster.addresses[i]), timeout=2.0).close()
          pending.discard(i)
        except OSError as e:
          errors[i] = e.strerror or str(e)
      if pending and time.monotonic() > deadline:
        missing = ', '.join(f'{cluster.names[i]} at {cluster.addresses[i]} ({errors[i]})'
                            for i in sorted(pending))
        raise ClusterStartError(
            f'{cluster.name} of {cluster.num_workers}: not reachable within '
            f'{timeout_seconds:g} s (training.worker_start_timeout_seconds): {missing}')
      if pending:
        time.sleep(0.5)
  finally:
    stop.set()
    answering.join()
    listener.close()


def make_strategy(cluster: Optional[TrainingCluster] = None,
                  training: TrainingConfig = TrainingConfig()) -> 'tf.distribute.Strategy':
  """MultiWorkerMirroredStrategy for a cluster of several workers, else the default strategy.

  Create it before any other TensorFlow op runs: it configures the runtime. Waits (bounded)
  for every worker to be reachable first.

  No per-collective timeout (`CommunicationOptions(timeout_seconds=...)`): in TensorFlow 2.16
  each collective op with a timeout holds a thread for the whole timeout, so a worker reaches
  thousands of threads within a minute of training and aborts (`std::system_error: Resource
  temporarily unavailable`). A dead worker is detected by the coordination service's heartbeat
  instead (UnavailableError on the others within about 10 s).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (not needed to check a cluster)
  if cluster is None:
    return tf.distribute.get_strategy()
  wait_for_workers(cluster, training.worker_start_timeout_seconds)
  logging.info('%s of %d joins the cluster %s', cluster.name, cluster.num_workers,
               ', '.join(cluster.addresses))
  return tf.distribute.MultiWorkerMirroredStrategy(
      communication_options=tf.distribute.experimental.CommunicationOptions(
          # AUTO: ring all-reduce over gRPC on CPUs, NCCL where workers have GPUs.
          implementation=tf.distribute.experimental.CommunicationImplementation.AUTO))
