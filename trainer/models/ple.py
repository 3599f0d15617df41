"""Progressive Layered Extraction (Tang et al., RecSys 2020); CGC is its one-level case.

Each extraction level has shared experts and, per task, task-specific experts. A task's gate
(softmax) mixes its own experts with the shared ones into the task's input for the next level;
below the last level a shared gate mixes every expert (all tasks' and the shared ones) into the
shared experts' next input. The last level's task mixtures feed the task towers.

`model.expert_units` gives one extraction level per entry (each expert of level i is one dense
layer of that many units): `[64]` is CGC, `[64, 32]` a two-level PLE. Groups by construction:
the shared experts and shared gates are the trunk; a task's experts and gates at every level,
with its tower, are that task's group (below the last level a task's experts also feed the
shared gate, so other tasks' losses reach them too: the groups set learning rates, not which
losses a variable sees).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import tensorflow as tf

from pipeline.config import PipelineConfig
from trainer.models.base import (TRUNK_GROUP, MultiTaskNetwork, build_task_heads, embed_inputs,
                                 feature_inputs)
from trainer.models.mmoe import Experts, MixExperts


def build_ple(config: PipelineConfig, cardinalities: Mapping[str, int],
              label_means: Optional[Mapping[str, float]] = None) -> MultiTaskNetwork:
  inputs = feature_inputs(config)
  x, trunk_layers = embed_inputs(config, inputs, cardinalities)
  tasks = [t.name for t in config.tasks]
  num_shared, num_task = config.model.num_shared_experts, config.model.num_task_experts
  task_layers: Dict[str, List[tf.keras.layers.Layer]] = {t: [] for t in tasks}
  task_inputs = {t: x for t in tasks}
  shared_input = x
  levels = list(config.model.expert_units)
  for level, units in enumerate(levels):
    shared_experts = Experts(num_shared, units, name=f'shared_experts_{level}')
    trunk_layers.append(shared_experts)
    shared_out = shared_experts(shared_input)  # [B, shared, units]
    task_out = {}
    for task in tasks:
      experts = Experts(num_task, units, name=f'{task}_experts_{level}')
      task_layers[task].append(experts)
      task_out[task] = experts(task_inputs[task])  # [B, task experts, units]
    mixed = {}
    for task in tasks:
      gate = tf.keras.layers.Dense(num_task + num_shared, activation='softmax',
                                   name=f'{task}_gate_{level}')
      task_layers[task].append(gate)
      candidates = tf.keras.layers.Concatenate(axis=1, name=f'{task}_candidates_{level}')(
          [task_out[task], shared_out])
      mixed[task] = MixExperts(name=f'{task}_mixture_{level}')(
          [candidates, gate(task_inputs[task])])
    if level < len(levels) - 1:
      gate = tf.keras.layers.Dense(len(tasks) * num_task + num_shared, activation='softmax',
                                   name=f'shared_gate_{level}')
      trunk_layers.append(gate)
      everything = tf.keras.layers.Concatenate(axis=1, name=f'all_experts_{level}')(
          [*(task_out[t] for t in tasks), shared_out])
      shared_input = MixExperts(name=f'shared_mixture_{level}')(
          [everything, gate(shared_input)])
    task_inputs = mixed
  outputs, groups = build_task_heads(config, task_inputs, label_means or {})
  for task in tasks:
    groups[task][:0] = task_layers[task]
  model = tf.keras.Model(inputs=inputs, outputs=outputs, name='ple')
  return MultiTaskNetwork(model=model, groups={TRUNK_GROUP: trunk_layers, **groups})
