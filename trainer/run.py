"""TFX Trainer entry point: `run_fn(fn_args)`, given to the Trainer by dotted path.

Reads the transformed examples, builds the configured multi-task network and its training
wrapper inside the distribution strategy's scope, trains with per-group optimizers and the
configured loss weighting, writes TensorBoard logs and `training_summary.json` (per task: the
learned sigma and effective loss weight, per epoch and final) to the model-run directory, and
exports the serving SavedModel.

A loss that becomes NaN or infinite stops training at once with `NonFiniteLossError`, naming
the step and the task(s) whose loss is not finite; nothing is exported (the export comes only
after training returns), so the Trainer fails and no model reaches the Evaluator or Pusher.

Distributed training (docs/distributed.md). When `TF_CONFIG` names more than one worker (set by
the Trainer's local launcher, components/distributed_trainer.py, or by the Kubeflow Training
Operator), `run_fn` trains under MultiWorkerMirroredStrategy:

- the batch in the config is per replica; the global batch is that times the replicas;
- every worker reads all the transformed examples and keeps its share of each global batch
  (auto-shard policy DATA, see `make_dataset`);
- only the chief (the `chief` task, or worker 0 when there is none) writes the serving model,
  the TensorBoard logs and `training_summary.json`; the others save to a temporary directory
  they delete (saving takes part in collectives, so every worker must save);
- `BackupAndRestore` backs the training state up under `<model_run>/backup` after every epoch;
  a restarted worker group resumes from there (the input skipping the batches already
  trained) and logs the step it resumed at. The backup is deleted when training completes;
- joining the cluster is bounded in time (`training.worker_start_timeout_seconds`); once
  training, a worker that dies is noticed by the others through the cluster's heartbeat
  (UnavailableError within about 10 s).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx

from pipeline.config import PipelineConfig, TrainingConfig
from trainer import export
from trainer.model import MultiTaskModel
from trainer.models import build_network
from trainer.preprocessing import (CONFIG_KEY, transformed_layout, unpack_transformed,
                                   vocabulary_name)

TRAINING_SUMMARY_FILE = 'training_summary.json'
BACKUP_DIR = 'backup'  # under the model-run directory, which every worker shares
_LABEL_MEAN_BATCHES = 20
_MAX_EPOCHS = 10
_CLUSTER_JOBS = ('chief', 'worker')  # what MultiWorkerMirroredStrategy trains with


# ---------------------------------------------------------------------------------------------
# The cluster: TF_CONFIG, checked; every worker reachable before TensorFlow joins them.


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
                  training: TrainingConfig = TrainingConfig()) -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy for a cluster of several workers, else the default strategy.

  Create it before any other TensorFlow op runs: it configures the runtime. Waits (bounded)
  for every worker to be reachable first.

  No per-collective timeout (`CommunicationOptions(timeout_seconds=...)`): in TensorFlow 2.16
  each collective op with a timeout holds a thread for the whole timeout, so a worker reaches
  thousands of threads within a minute of training and aborts (`std::system_error: Resource
  temporarily unavailable`). A dead worker is detected by the coordination service's heartbeat
  instead (UnavailableError on the others within about 10 s).
  """
  if cluster is None:
    return tf.distribute.get_strategy()
  wait_for_workers(cluster, training.worker_start_timeout_seconds)
  logging.info('%s of %d joins the cluster %s', cluster.name, cluster.num_workers,
               ', '.join(cluster.addresses))
  return tf.distribute.MultiWorkerMirroredStrategy(
      communication_options=tf.distribute.experimental.CommunicationOptions(
          # AUTO: ring all-reduce over gRPC on CPUs, NCCL where workers have GPUs.
          implementation=tf.distribute.experimental.CommunicationImplementation.AUTO))


# The training shuffle works on blocks of records, not on single records: each block is parsed
# at once, then put in a random order; the blocks themselves go through a shuffle buffer. With
# ~100-byte records, per-record work in tf.data (a shuffle buffer's hand-off of each record,
# parsing per batch) cost more than the record itself: docs/performance.md.
SHUFFLE_BLOCK = 8192   # records per block (at least the global batch)
SHUFFLE_BLOCKS = 8     # blocks in the block-order shuffle buffer (64k records with 8192)


def packed_feature_spec(config: PipelineConfig, tf_transform_output: tft.TFTransformOutput
                        ) -> Dict[str, tf.io.FixedLenFeature]:
  """Parse spec of the transformed examples' packed columns (`transformed_layout`), checked
  against the config: a column missing or of another width means Transform ran another
  config or an older preprocessing_fn, and its positions would be read as the wrong features."""
  widths = collections.Counter(column for column, _ in transformed_layout(config).values())
  transformed = tf_transform_output.transformed_feature_spec()
  wrong = [f'{column} (expected {width} values, found '
           f'{list(transformed[column].shape) if column in transformed else "no such column"})'
           for column, width in widths.items()
           if column not in transformed or list(transformed[column].shape) != [width]]
  if wrong:
    raise ValueError('the transformed examples do not match the config\'s features and tasks: '
                     + '; '.join(wrong))
  return {column: transformed[column] for column in widths}


def block_shuffle(records: tf.data.Dataset,
                  parse: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
                  seed: int, batch_size: int) -> tf.data.Dataset:
  """Batches of parsed columns from a (repeated) dataset of serialized records, mixed by
  blocks (`make_dataset`): blocks of SHUFFLE_BLOCK records (at least the batch) through a
  seeded shuffle buffer of SHUFFLE_BLOCKS; `parse` turns a block into its columns, each with
  the block's records along its first axis; the block's rows put in the order of a stateless
  permutation keyed by the block's position; then re-cut into batches of `batch_size`."""
  block = max(SHUFFLE_BLOCK, batch_size)

  def parse_and_permute(position, serialized):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(block), seed=tf.stack([tf.constant(seed, tf.int64), position]))
    return {name: tf.gather(values, order) for name, values in parse(serialized).items()}

  return (records.batch(block, drop_remainder=True)
          .shuffle(SHUFFLE_BLOCKS, seed=seed)
          .enumerate()
          .map(parse_and_permute, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .rebatch(batch_size, drop_remainder=True))


def make_dataset(file_pattern: List[str], tf_transform_output: tft.TFTransformOutput,
                 config: PipelineConfig, batch_size: int,
                 shuffle: bool = True) -> tf.data.Dataset:
  """(features, labels) batches of transformed examples, repeated indefinitely.

  Training input (`shuffle=True`): the TFRecord files in a seeded random order, read one
  after another (not interleaved: an interleave, even in one thread, costs about a quarter of
  the input's time per record, and ExampleGen already writes each split in random order),
  repeated; cut into blocks of SHUFFLE_BLOCK records; the blocks through a seeded shuffle
  buffer of SHUFFLE_BLOCKS; each block parsed with one `tf.io.parse_example` (its three
  packed columns, `trainer.preprocessing.transformed_layout`, unpacked by name; blocks in
  parallel) and its records put in a random order (a stateless permutation keyed by the
  block's position, so every epoch mixes differently); then re-cut into batches and
  prefetched (`block_shuffle`). A record can move anywhere within its block, and its block several blocks:
  mixing on the scale of the 10,000-record shuffle buffer this replaced, at about 60% of its
  input cost per example (the input alone, docs/performance.md).
  Evaluation input (`shuffle=False`): the files one after another in name order, batched
  and parsed per batch.

  Neither uses TFXIO's `TensorFlowDataset` (`DataAccessor.tf_dataset_factory`): that one reads
  through a parallel interleave, which hands every record between threads; with records of
  ~100 bytes the hand-off costs more than the reading (docs/performance.md).

  `batch_size` is the global batch. Under MultiWorkerMirroredStrategy Keras distributes the
  dataset with auto-shard policy DATA: every worker reads all the examples, in the same seeded
  order (every step above is deterministic), and keeps its own slice of each global batch.
  FILE (one file per worker) would read less, but Transform writes each split as a few gzip
  TFRecord files (one for a small log), so with FILE a worker could get no file or most of the
  data; DATA gives every worker an equal share whatever the file count, and each step's global
  batch is the one a single worker would train on.
  """
  files = sorted({f for pattern in file_pattern for f in tf.io.gfile.glob(pattern)})
  if not files:
    raise ValueError(f'no transformed examples match {file_pattern}')
  compressed = {f.endswith('.gz') for f in files}
  if len(compressed) > 1:
    raise ValueError(f'mixed gzip and uncompressed TFRecord files in {file_pattern}')
  compression = 'GZIP' if compressed.pop() else ''
  seed = config.training.seed
  spec = packed_feature_spec(config, tf_transform_output)
  feature_names = [f.name for f in config.features]
  label_names = [t.label for t in config.tasks]

  def features_and_labels(columns):
    return ({n: columns[n] for n in feature_names}, {n: columns[n] for n in label_names})

  dataset = tf.data.Dataset.from_tensor_slices(files)
  if shuffle:
    dataset = dataset.shuffle(len(files), seed=seed)
  dataset = tf.data.TFRecordDataset(dataset, compression_type=compression).repeat()
  if shuffle:
    dataset = block_shuffle(
        dataset, lambda serialized: unpack_transformed(config,
                                                       tf.io.parse_example(serialized, spec)),
        seed, batch_size).map(features_and_labels)
  else:
    dataset = (dataset.batch(batch_size, drop_remainder=True)
               .map(lambda serialized: features_and_labels(
                   unpack_transformed(config, tf.io.parse_example(serialized, spec))),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return dataset.with_options(options)


def cardinalities(config: PipelineConfig,
                  tf_transform_output: tft.TFTransformOutput) -> Dict[str, int]:
  """Embedding rows per categorical feature: vocabulary size plus OOV buckets."""
  return {f.name: tf_transform_output.vocabulary_size_by_name(vocabulary_name(f.name)) +
          f.oov_buckets for f in config.categorical_features}


def estimate_label_means(dataset: tf.data.Dataset, config: PipelineConfig) -> Dict[str, float]:
  """Mean of each regression label over a few training batches (initial output bias)."""
  regression = [t for t in config.tasks if t.type == 'regression']
  if not regression:
    return {}
  sums = {t.name: 0.0 for t in regression}
  count = 0
  for _, labels in dataset.take(_LABEL_MEAN_BATCHES):
    for t in regression:
      sums[t.name] += float(tf.reduce_sum(labels[t.label]))
    count += int(tf.size(labels[regression[0].label]))
  return {name: total / max(count, 1) for name, total in sums.items()}


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss; the model is not exported."""


class StopOnNonFiniteLoss(tf.keras.callbacks.Callback):
  """Raises NonFiniteLossError at the first training step whose loss is not finite (and after
  an epoch whose validation loss is not), naming the step and the task(s).

  The per-task losses Keras reports are running means over the epoch, so the first batch at
  which one turns non-finite is the step that produced it.
  """

  def __init__(self, task_names: Sequence[str], steps_per_epoch: int, train_steps: int):
    super().__init__()
    self._task_names = list(task_names)
    self._steps_per_epoch = steps_per_epoch
    self._train_steps = train_steps
    self._epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    self._check(logs, '', f'at step {self._epoch * self._steps_per_epoch + batch + 1} of '
                f'{self._train_steps}')

  def on_epoch_end(self, epoch, logs=None):
    self._check(logs, 'val_', f'in validation after epoch {epoch + 1} (step '
                f'{(epoch + 1) * self._steps_per_epoch} of {self._train_steps})')

  def _check(self, logs: Optional[Mapping[str, float]], prefix: str, where: str) -> None:
    logs = logs or {}
    total = logs.get(prefix + 'loss')
    tasks = {name: float(logs[f'{prefix}{name}_loss']) for name in self._task_names
             if f'{prefix}{name}_loss' in logs}
    bad = {name: value for name, value in tasks.items() if not math.isfinite(value)}
    if not bad and (total is None or math.isfinite(float(total))):
      return
    if bad:
      what = (f'the loss of task(s) {", ".join(sorted(bad))} is not finite ('
              + ', '.join(f'{name}: {value}' for name, value in sorted(bad.items())) + ')')
    else:
      what = (f'the total loss is {float(total)} while every task loss is finite (the loss '
              'weighting overflowed)')
    raise NonFiniteLossError(
        f'Training stopped {where}: {what}. No model was exported. Common causes: a learning '
        'rate too high for the task (tasks[].optimizer, training.trunk_optimizer), or labels '
        'far outside the expected range (tasks[].label_min/label_max).')


def epoch_schedule(train_steps: int) -> Tuple[int, int]:
  """(epochs, steps per epoch) for `train_steps` steps: up to 10 epochs, for logging."""
  epochs = min(_MAX_EPOCHS, train_steps)
  return epochs, max(1, train_steps // epochs)


def backed_up_steps(backup_dir: str, steps_per_epoch: int) -> int:
  """How many steps the backup in `backup_dir` holds (0 without one): its completed epochs.

  Reads what Keras' BackupAndRestore writes: checkpoints in `<backup_dir>/chief/`, with the
  last completed epoch in `ckpt_saved_epoch`.
  """
  checkpoint = tf.train.latest_checkpoint(os.path.join(backup_dir, 'chief'))
  if not checkpoint:
    return 0
  epoch = tf.train.load_variable(checkpoint, 'ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE')
  return (int(epoch) + 1) * steps_per_epoch if epoch >= 0 else 0


def train(model: MultiTaskModel, train_dataset: tf.data.Dataset, eval_dataset: tf.data.Dataset,
          config: PipelineConfig, train_steps: int, eval_steps: int,
          callbacks: Sequence[tf.keras.callbacks.Callback] = ()) -> Dict[str, List[float]]:
  """Fits the model for `train_steps` steps (in up to 10 epochs); returns the Keras history.

  Raises NonFiniteLossError at the first step whose loss is NaN or infinite.
  """
  epochs, steps_per_epoch = epoch_schedule(train_steps)
  stop = StopOnNonFiniteLoss([t.name for t in config.tasks], steps_per_epoch,
                             steps_per_epoch * epochs)
  history = model.fit(
      train_dataset,
      epochs=epochs,
      steps_per_epoch=steps_per_epoch,
      validation_data=eval_dataset,
      validation_steps=max(1, eval_steps // epochs),
      callbacks=[stop, *callbacks],
      verbose=2)
  return history.history


def _summarise(history: Mapping[str, List[float]], config: PipelineConfig,
               model: MultiTaskModel) -> Dict:
  sigmas = model.loss_weighting.sigmas()
  weights = model.loss_weighting.task_weights()
  tasks = {}
  for t in config.tasks:
    tasks[t.name] = {
        'sigma': float(sigmas[t.name]),
        'loss_weight': float(weights[t.name]),
        'sigma_by_epoch': [float(v) for v in history.get(f'{t.name}_sigma', [])],
        'loss_weight_by_epoch': [float(v) for v in history.get(f'{t.name}_weight', [])],
        'train_loss_by_epoch': [float(v) for v in history.get(f'{t.name}_loss', [])],
        'eval_loss_by_epoch': [float(v) for v in history.get(f'val_{t.name}_loss', [])],
    }
  return {'loss_weighting': config.training.loss_weighting, 'tasks': tasks,
          'train_loss_by_epoch': [float(v) for v in history.get('loss', [])]}


class ReportResume(tf.keras.callbacks.Callback):
  """Logs, at the start of training, the step BackupAndRestore resumed from (0 without a
  backup): the trunk optimizer's step counter, restored with the rest of the training state.
  Goes after BackupAndRestore in the callback list, which restores in `on_train_begin`."""

  def __init__(self, backup_dir: str, train_steps: int, worker: str):
    super().__init__()
    self._backup_dir = backup_dir
    self._train_steps = train_steps
    self._worker = worker

  def on_train_begin(self, logs=None):
    step = int(self.model.optimizer.iterations.numpy())
    if step:
      logging.info('%s: resumed from the backup in %s at step %d of %d', self._worker,
                   self._backup_dir, step, self._train_steps)
    else:
      logging.info('%s: no backup in %s, training starts at step 0 of %d', self._worker,
                   self._backup_dir, self._train_steps)


class LogThroughput(tf.keras.callbacks.Callback):
  """Logs how many examples per second this worker trained on (its share of each global
  batch), over the whole fit and after the first step (which includes tracing the step)."""

  def __init__(self, worker_batch_size: int, worker: str):
    super().__init__()
    self._batch = worker_batch_size
    self._worker = worker
    self._steps = 0
    self._start = self._after_first = 0.0

  def on_train_begin(self, logs=None):
    self._start = time.monotonic()

  def on_train_batch_end(self, batch, logs=None):
    self._steps += 1
    if self._steps == 1:
      self._after_first = time.monotonic()

  def on_train_end(self, logs=None):
    now = time.monotonic()
    total = now - self._start
    later = now - self._after_first
    logging.info(
        '%s: trained %d steps of %d examples in %.1f s: %.0f examples/s (%.0f examples/s '
        'after the first step)', self._worker, self._steps, self._batch, total,
        self._steps * self._batch / max(total, 1e-9),
        (self._steps - 1) * self._batch / max(later, 1e-9))


@contextlib.contextmanager
def _worker_outputs(fn_args: tfx.components.FnArgs, is_chief: bool) -> Iterator[Tuple[str, str]]:
  """(serving model dir, model-run dir) this worker writes: the Trainer's outputs on the chief,
  a temporary directory deleted afterwards on the other workers."""
  if is_chief:
    yield fn_args.serving_model_dir, fn_args.model_run_dir
    return
  scratch = tempfile.mkdtemp(prefix='mtl-worker-')
  try:
    yield os.path.join(scratch, 'serving_model'), os.path.join(scratch, 'model_run')
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _barrier(strategy: tf.distribute.Strategy) -> None:
  """Returns once every worker got here (one tiny all-reduce; nothing with one worker)."""
  if strategy.num_replicas_in_sync > 1:
    strategy.reduce(tf.distribute.ReduceOp.SUM,
                    strategy.run(lambda: tf.constant(1.0)), axis=None)


def run_fn(fn_args: tfx.components.FnArgs) -> None:
  """Trains and exports the multi-task model (called by TFX's Trainer, on every worker)."""
  config = PipelineConfig.from_json(fn_args.custom_config[CONFIG_KEY])
  cluster = parse_tf_config(os.environ.get('TF_CONFIG'))
  # First: MultiWorkerMirroredStrategy configures the TensorFlow runtime.
  strategy = make_strategy(cluster, config.training)
  is_chief = cluster is None or cluster.is_chief
  worker = f'{cluster.name} of {cluster.num_workers}' if cluster else 'trainer'
  tf.keras.utils.set_random_seed(config.training.seed)
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  batch_size = config.training.batch_size * strategy.num_replicas_in_sync  # global batch

  train_dataset = make_dataset(fn_args.train_files, tf_transform_output, config, batch_size)
  eval_dataset = make_dataset(fn_args.eval_files, tf_transform_output, config, batch_size,
                              shuffle=False)
  label_means = estimate_label_means(train_dataset, config)

  # The network, the loss weighting's log-variances and every group's optimizer are created
  # here (MultiTaskModel.__init__), so they are mirrored across the replicas.
  with strategy.scope():
    network = build_network(config, cardinalities(config, tf_transform_output), label_means)
    model = MultiTaskModel(network, config)
    model.compile(optimizer=model.group_optimizers['trunk'])

  backup_dir = os.path.join(fn_args.model_run_dir, BACKUP_DIR)
  # Resuming: the input skips the batches trained before the backup, so a resumed run trains
  # on the batches an uninterrupted one would (the input's position is not in the backup).
  resumed_steps = backed_up_steps(backup_dir, epoch_schedule(fn_args.train_steps)[1])
  if resumed_steps:
    logging.info('%s: a backup holds %d steps; the input skips their batches', worker,
                 resumed_steps)
    train_dataset = train_dataset.skip(resumed_steps)
  with _worker_outputs(fn_args, is_chief) as (serving_model_dir, model_run_dir):
    callbacks = [
        # Every worker restores; the chief writes the backup (the others a temporary copy).
        tf.keras.callbacks.BackupAndRestore(backup_dir, save_freq='epoch',
                                            delete_checkpoint=True),
        ReportResume(backup_dir, fn_args.train_steps, worker),
        tf.keras.callbacks.TensorBoard(log_dir=model_run_dir, update_freq='epoch'),
        LogThroughput(batch_size // (cluster.num_workers if cluster else 1), worker),
    ]
    # Raises NonFiniteLossError on a NaN or infinite loss, before anything below is written.
    history = train(model, train_dataset, eval_dataset, config, fn_args.train_steps,
                    fn_args.eval_steps, callbacks=callbacks)
    if is_chief:
      summary = _summarise(history, config, model)
      with tf.io.gfile.GFile(os.path.join(model_run_dir, TRAINING_SUMMARY_FILE), 'w') as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    export.export_serving_model(model.network, config, tf_transform_output, serving_model_dir)
    # No worker leaves before all have saved (saving may take part in collectives).
    _barrier(strategy)
  if is_chief:
    # BackupAndRestore deleted its checkpoints; the directory that held them goes too.
    if tf.io.gfile.exists(backup_dir):
      tf.io.gfile.rmtree(backup_dir)
  else:
    # TFX's Trainer executor, run on every worker, fails unless serving_model_dir exists; the
    # chief writes the model into it.
    tf.io.gfile.makedirs(fn_args.serving_model_dir)
