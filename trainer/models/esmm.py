"""Entire Space Multi-task Model (Ma et al., SIGIR 2018) for click -> conversion.

Two towers share the embeddings and trunk: a CTR tower and a CVR tower. The model predicts
pCTCVR = pCTR * pCVR, and both losses are over all impressions: the click task's on pCTR, the
conversion task's on pCTCVR against "clicked and converted" (the log's conversion label, which
is only ever 1 after a click). The CVR tower is never supervised directly, which removes the
sample-selection bias of training CVR on clicked impressions only. A space on the conversion task
(`where: {click: 1}`) does not change that training (its conversion label reads 0 outside the
space); it makes TFMA evaluate the `cvr` output on the space's rows.

Outputs: the click task (= pCTR), the conversion task (= pCTCVR), any other task, and the
aliases `ctr`, `cvr` and `ctcvr`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional

import tensorflow as tf

from pipeline.config import PipelineConfig
from trainer.models.base import (TRUNK_GROUP, MultiTaskNetwork, build_task_heads, embed_inputs,
                                 feature_inputs, task_head)
from trainer.models.shared_bottom import shared_trunk

ALIASES = ('ctr', 'cvr', 'ctcvr')


def esmm_output_labels(config: PipelineConfig) -> Dict[str, str]:
  """The alias outputs and the label column TFMA pairs with each."""
  click = config.task(config.model.esmm_click_task)
  conversion = config.task(config.model.esmm_conversion_task)
  return {'ctr': click.label, 'cvr': conversion.label, 'ctcvr': conversion.label}


def esmm_output_weights(config: PipelineConfig) -> Dict[str, str]:
  """`cvr` (pCVR, the probability of a conversion after a click) is evaluated on the conversion
  task's space when it has one (e.g. where click == 1): the rows where pCVR has a label."""
  column = config.task(config.model.esmm_conversion_task).weight_column
  return {'cvr': column} if column else {}


def build_esmm(config: PipelineConfig, cardinalities: Mapping[str, int],
               label_means: Optional[Mapping[str, float]] = None) -> MultiTaskNetwork:
  click = config.task(config.model.esmm_click_task)
  conversion = config.task(config.model.esmm_conversion_task)
  inputs = feature_inputs(config)
  x, embeddings = embed_inputs(config, inputs, cardinalities)
  x, trunk_layers = shared_trunk(config, x)

  ctr, click_layers = task_head(click, x, dropout=config.model.head_dropout)
  # The CVR tower: the conversion task's head settings, a sigmoid output of its own name.
  cvr_task = dataclasses.replace(conversion, name=f'{conversion.name}_cvr')
  cvr, cvr_layers = task_head(cvr_task, x, dropout=config.model.head_dropout)
  ctcvr = tf.keras.layers.Multiply(name=conversion.name)([ctr, cvr])

  outputs = {click.name: ctr, conversion.name: ctcvr}
  others = {t.name: x for t in config.tasks if t.name not in outputs}
  outputs, groups = build_task_heads(config, others, label_means or {}, outputs)
  for alias, tensor in zip(ALIASES, (ctr, cvr, ctcvr)):
    outputs[alias] = tf.keras.layers.Activation('linear', name=alias)(tensor)
  groups[click.name] = click_layers
  groups[conversion.name] = cvr_layers
  model = tf.keras.Model(inputs=inputs, outputs=outputs, name='esmm')
  return MultiTaskNetwork(model=model, groups={TRUNK_GROUP: embeddings + trunk_layers, **groups})
