"""Multi-task architectures, registered by the name `model.type` uses in the config.

Each builder returns a MultiTaskNetwork (see base.py): a functional Keras model from the
transformed features to one output per task (plus architecture-specific extra outputs), and
the layers of each optimizer group.
"""

from typing import Callable, Dict

from pipeline.config import PipelineConfig
from trainer.models.base import MultiTaskNetwork
from trainer.models.esmm import build_esmm, esmm_output_labels, esmm_output_weights
from trainer.models.mmoe import build_mmoe
from trainer.models.ple import build_ple
from trainer.models.shared_bottom import build_shared_bottom

ARCHITECTURES: Dict[str, Callable[..., MultiTaskNetwork]] = {
    'shared_bottom': build_shared_bottom,
    'mmoe': build_mmoe,
    'esmm': build_esmm,
    'ple': build_ple,
}


def build_network(config: PipelineConfig, cardinalities, label_means=None) -> MultiTaskNetwork:
  """Builds the architecture the config names."""
  return ARCHITECTURES[config.model.type](config, cardinalities, label_means)


def output_labels(config: PipelineConfig) -> Dict[str, str]:
  """Every output the served model returns, with the label column it is evaluated against."""
  labels = {t.name: t.label for t in config.tasks}
  if config.model.type == 'esmm':
    labels.update(esmm_output_labels(config))
  return labels


def output_weights(config: PipelineConfig) -> Dict[str, str]:
  """The outputs trained and evaluated on part of the rows, with the example weight column that
  says which (tasks[].space, tasks[].weight: 0 outside the space). The other outputs use every
  row: tasks without a space, and ESMM's click and conversion tasks, which it trains on every
  impression (its `cvr` output is evaluated on the conversion task's space)."""
  weights = {t.name: t.weight_column for t in config.tasks if t.weight_column}
  if config.model.type == 'esmm':
    for name in (config.model.esmm_click_task, config.model.esmm_conversion_task):
      weights.pop(name, None)
    weights.update(esmm_output_weights(config))
  return weights
