"""The project's own artifact types.

A custom type's name is also how TFX's Kubeflow entrypoint finds its class: the compiled spec
carries the name as the artifact schema's title, and the entrypoint imports that title as a
class path (`_retrieve_class_path` in tfx/orchestration/kubeflow/v2/container/
kubeflow_v2_entrypoint_utils.py). So the name must be both a KFP schema title,
`<namespace>.<Title>` (`compiler_utils._SCHEMA_TITLE_RE`: a lower-case namespace of 3 to 21
characters, a title starting with a capital), and an importable path: `components` is this
package and re-exports the class.
"""

from __future__ import annotations

from tfx.types import artifact as artifact_lib
from tfx.types import system_artifacts


class QuarantinedRecords(artifact_lib.Artifact):
  """Log lines that could not become examples: JSON lines of reason, file, line number, raw."""
  TYPE_NAME = 'components.QuarantinedRecords'
  TYPE_ANNOTATION = system_artifacts.Dataset
