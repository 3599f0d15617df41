"""TFX Trainer entry point: `run_fn(fn_args)`, given to the Trainer by dotted path.

Reads the transformed examples, builds the configured multi-task network and its training
wrapper inside the distribution strategy's scope, trains with per-group optimizers and the
configured loss weighting, writes TensorBoard logs and `training_summary.json` (per task: the
learned sigma and effective loss weight, per epoch and final; which epoch was exported and
why) to the model-run directory, and exports the serving SavedModel: the last epoch's weights,
or with `training.early_stopping` the best epoch's (`trainer.early_stopping`).

A loss that becomes NaN or infinite stops training at once with `NonFiniteLossError`, naming
the step and the task(s) whose loss is not finite; nothing is exported (the export comes only
after training returns), so the Trainer fails and no model reaches the Evaluator or Pusher.

Distributed training (docs/distributed.md). When `TF_CONFIG` names more than one worker
(`trainer.cluster`), `run_fn` trains under MultiWorkerMirroredStrategy:

- the batch in the config is per replica; the global batch is that times the replicas;
- every worker reads all the transformed examples and keeps its share of each global batch
  (auto-shard policy DATA, see `trainer.input.make_dataset`);
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

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx

from pipeline.config import PipelineConfig
from trainer import balancing, early_stopping, export
from trainer.cluster import make_strategy, parse_tf_config
from trainer.input import cardinalities, estimate_label_means, make_dataset
from trainer.model import MultiTaskModel
from trainer.models import build_network
from trainer.preprocessing import CONFIG_KEY

TRAINING_SUMMARY_FILE = 'training_summary.json'
BACKUP_DIR = 'backup'  # under the model-run directory, which every worker shares
_MAX_EPOCHS = 10


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
               model: MultiTaskModel, exported: Dict) -> Dict:
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
  return {'loss_weighting': config.training.loss_weighting,
          'gradient_surgery': config.training.gradient_surgery, 'tasks': tasks,
          'train_loss_by_epoch': [float(v) for v in history.get('loss', [])],
          'eval_loss_by_epoch': [float(v) for v in history.get('val_loss', [])],
          'exported': exported}


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
    stopping = config.training.early_stopping
    best_epoch = (early_stopping.BestEpoch(
        stopping, early_stopping.attach_state(model, model.network), model.network)
                  if stopping is not None else None)

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
        # Before the backup, so an epoch's backup holds the early-stopping state after it.
        *([best_epoch] if best_epoch is not None else []),
        # Likewise DWA's loss history and next weights.
        *([balancing.DynamicWeightAverage(model.loss_weighting, [t.name for t in config.tasks])]
          if config.training.loss_weighting == 'dwa' else []),
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
      exported = (best_epoch.report() if best_epoch is not None else
                  {'exported_epoch': epoch_schedule(fn_args.train_steps)[0],
                   'reason': 'the last epoch (training.early_stopping is off)'})
      summary = _summarise(history, config, model, exported)
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
