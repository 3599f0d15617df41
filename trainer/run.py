"""TFX Trainer entry point: `run_fn(fn_args)`, given to the Trainer by dotted path.

Reads the transformed examples, builds the configured multi-task network and its training
wrapper inside the distribution strategy's scope, trains with per-group optimizers and the
configured loss weighting, writes TensorBoard logs and `training_summary.json` (per task: the
learned sigma and effective loss weight, per epoch and final) to the model-run directory, and
exports the serving SavedModel.

A loss that becomes NaN or infinite stops training at once with `NonFiniteLossError`, naming
the step and the task(s) whose loss is not finite; nothing is exported (the export comes only
after training returns), so the Trainer fails and no model reaches the Evaluator or Pusher.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence

import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from pipeline.config import PipelineConfig
from trainer import export
from trainer.model import MultiTaskModel
from trainer.models import build_network
from trainer.preprocessing import CONFIG_KEY, vocabulary_name

TRAINING_SUMMARY_FILE = 'training_summary.json'
_LABEL_MEAN_BATCHES = 20
_MAX_EPOCHS = 10


def make_strategy() -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy when TF_CONFIG names more than one worker, else the default."""
  tf_config = json.loads(os.environ.get('TF_CONFIG') or '{}')
  workers = tf_config.get('cluster', {}).get('worker', [])
  if len(workers) > 1:
    return tf.distribute.MultiWorkerMirroredStrategy()
  return tf.distribute.get_strategy()


def make_dataset(file_pattern: List[str], data_accessor: tfx.components.DataAccessor,
                 tf_transform_output: tft.TFTransformOutput, config: PipelineConfig,
                 batch_size: int, shuffle: bool = True) -> tf.data.Dataset:
  """(features, labels) batches of transformed examples, repeated indefinitely."""
  dataset = data_accessor.tf_dataset_factory(
      file_pattern,
      tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle=shuffle,
                                     shuffle_seed=config.training.seed, num_epochs=None),
      tf_transform_output.transformed_metadata.schema)
  feature_names = [f.name for f in config.features]
  label_names = [t.label for t in config.tasks]

  def split(batch):
    return ({n: batch[n] for n in feature_names}, {n: batch[n] for n in label_names})

  return dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


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


def train(model: MultiTaskModel, train_dataset: tf.data.Dataset, eval_dataset: tf.data.Dataset,
          config: PipelineConfig, train_steps: int, eval_steps: int,
          callbacks: Sequence[tf.keras.callbacks.Callback] = ()) -> Dict[str, List[float]]:
  """Fits the model for `train_steps` steps (in up to 10 epochs); returns the Keras history.

  Raises NonFiniteLossError at the first step whose loss is NaN or infinite.
  """
  epochs = min(_MAX_EPOCHS, train_steps)
  steps_per_epoch = max(1, train_steps // epochs)
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


def run_fn(fn_args: tfx.components.FnArgs) -> None:
  """Trains and exports the multi-task model (called by TFX's Trainer)."""
  config = PipelineConfig.from_json(fn_args.custom_config[CONFIG_KEY])
  tf.keras.utils.set_random_seed(config.training.seed)
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  strategy = make_strategy()
  batch_size = config.training.batch_size * strategy.num_replicas_in_sync

  train_dataset = make_dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                               config, batch_size)
  eval_dataset = make_dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                              config, batch_size, shuffle=False)
  label_means = estimate_label_means(train_dataset, config)

  with strategy.scope():
    network = build_network(config, cardinalities(config, tf_transform_output), label_means)
    model = MultiTaskModel(network, config)
    model.compile(optimizer=model.group_optimizers['trunk'])

  tensorboard = tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq='epoch')
  # Raises NonFiniteLossError on a NaN or infinite loss, before anything below is written.
  history = train(model, train_dataset, eval_dataset, config, fn_args.train_steps,
                  fn_args.eval_steps, callbacks=[tensorboard])

  summary = _summarise(history, config, model)
  with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, TRAINING_SUMMARY_FILE), 'w') as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  export.export_serving_model(model.network, config, tf_transform_output,
                              fn_args.serving_model_dir)
