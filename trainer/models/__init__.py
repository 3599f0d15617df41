"""Multi-task architectures, registered by the name `model.type` uses in the config."""

from typing import Callable, Dict

from trainer.models.base import MultiTaskNetwork
from trainer.models.shared_bottom import build_shared_bottom

ARCHITECTURES: Dict[str, Callable[..., MultiTaskNetwork]] = {
    'shared_bottom': build_shared_bottom,
}


def build_network(config, cardinalities, label_means=None) -> MultiTaskNetwork:
  """Builds the architecture the config names."""
  return ARCHITECTURES[config.model.type](config, cardinalities, label_means)
