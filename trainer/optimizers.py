"""Optimizer groups: one optimizer for the shared trunk, one per task head, one for the loss
weights, each with its own type, learning rate and optional schedule from the config.

Variables are assigned to groups by construction (the model builder says which layers form the
trunk and which form each head), never by matching variable names.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import tensorflow as tf

from pipeline.config import OptimizerConfig, PipelineConfig

from trainer.models.base import TRUNK_GROUP  # one name for the trunk group
LOSS_WEIGHTS_GROUP = 'loss_weights'


def learning_rate(spec: OptimizerConfig, total_steps: int):
  """A constant rate, or a schedule over the run's training steps."""
  if spec.schedule == 'cosine':
    return tf.keras.optimizers.schedules.CosineDecay(spec.learning_rate, total_steps)
  if spec.schedule == 'exponential':
    return tf.keras.optimizers.schedules.ExponentialDecay(spec.learning_rate, total_steps,
                                                          spec.decay_rate)
  return spec.learning_rate


def make_optimizer(spec: OptimizerConfig, total_steps: int) -> tf.keras.optimizers.Optimizer:
  classes = {'adam': tf.keras.optimizers.Adam, 'adagrad': tf.keras.optimizers.Adagrad,
             'sgd': tf.keras.optimizers.SGD}
  # weight_decay is Keras' decoupled decay (AdamW's for adam): before each update every
  # variable not excluded shrinks by learning_rate * weight_decay.
  return classes[spec.type](learning_rate=learning_rate(spec, total_steps),
                            weight_decay=spec.weight_decay or None)


def exclude_biases_from_decay(optimizer: tf.keras.optimizers.Optimizer,
                              layers: Sequence[tf.Module]) -> None:
  """Weight decay applies to kernels and embedding tables, not to biases (the `bias` attribute
  of the layers and of the layers inside them, by construction); must run before the
  optimizer's first step."""
  optimizer.exclude_from_weight_decay(var_list=[
      module.bias for layer in layers for module in (layer, *layer.submodules)
      if isinstance(getattr(module, 'bias', None), tf.Variable)])


def build_optimizers(config: PipelineConfig) -> Dict[str, tf.keras.optimizers.Optimizer]:
  """{group name: optimizer}: `trunk`, each task's name, and `loss_weights`."""
  steps = config.training.train_steps
  optimizers = {TRUNK_GROUP: make_optimizer(config.training.trunk_optimizer, steps)}
  for task in config.tasks:
    optimizers[task.name] = make_optimizer(task.optimizer, steps)
  optimizers[LOSS_WEIGHTS_GROUP] = make_optimizer(config.training.loss_weights_optimizer, steps)
  return optimizers


def group_variables(groups: Mapping[str, Sequence[tf.Module]]) -> Dict[str, List[tf.Variable]]:
  """{group: trainable variables of its layers}, in a stable order."""
  return {group: [v for layer in layers for v in layer.trainable_variables]
          for group, layers in groups.items()}


def check_groups_cover(variables: Sequence[tf.Variable],
                       grouped: Mapping[str, Sequence[tf.Variable]]) -> None:
  """Raises if a trainable variable is in no group or in more than one."""
  owners: Dict[int, List[str]] = {}
  for group, group_vars in grouped.items():
    for v in group_vars:
      owners.setdefault(id(v), []).append(group)
  problems = []
  for v in variables:
    found = owners.get(id(v), [])
    if len(found) != 1:
      problems.append(f'{v.name}: in groups {found or "none"}')
  known = {id(v) for v in variables}
  for group, group_vars in grouped.items():
    problems.extend(f'{v.name}: in group {group} but not trainable in the model'
                    for v in group_vars if id(v) not in known)
  if problems:
    raise ValueError('optimizer groups do not cover the trainable variables exactly once:\n  ' +
                     '\n  '.join(problems))
