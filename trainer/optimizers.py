"""Optimizer groups: one optimizer for the shared trunk, one per task head, one for the loss
weights, each with its own learning rate from the config.

Variables are assigned to groups by construction (the model builder says which layers form the
trunk and which form each head), never by matching variable names.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import tensorflow as tf

from pipeline.config import PipelineConfig

from trainer.models.base import TRUNK_GROUP  # one name for the trunk group
LOSS_WEIGHTS_GROUP = 'loss_weights'


def make_optimizer(kind: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
  if kind == 'adam':
    return tf.keras.optimizers.Adam(learning_rate=learning_rate)
  if kind == 'adagrad':
    return tf.keras.optimizers.Adagrad(learning_rate=learning_rate)
  if kind == 'sgd':
    return tf.keras.optimizers.SGD(learning_rate=learning_rate)
  raise ValueError(f'unknown optimizer {kind!r}')


def build_optimizers(config: PipelineConfig) -> Dict[str, tf.keras.optimizers.Optimizer]:
  """{group name: optimizer}: `trunk`, each task's name, and `loss_weights`."""
  kind = config.training.optimizer
  optimizers = {TRUNK_GROUP: make_optimizer(kind, config.training.trunk_learning_rate)}
  for task in config.tasks:
    optimizers[task.name] = make_optimizer(kind, task.learning_rate)
  optimizers[LOSS_WEIGHTS_GROUP] = make_optimizer(kind,
                                                  config.training.loss_weights_learning_rate)
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
