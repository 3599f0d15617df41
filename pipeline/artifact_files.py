"""What each artifact of a local run held when it was written, so that a rerun notices an
artifact that has since lost files and re-creates it instead of failing later.

TFX's cache reuses a component's outputs when its inputs and properties are unchanged and the
outputs' directories exist (`tfx.orchestration.portable.cache_utils.get_cached_outputs`: the
artifacts must be LIVE in ML Metadata and `verify_artifacts` checks that each URI exists). A
file deleted inside an artifact directory (one shard of the transformed examples) passes that
check, and the run failed much later, in the consumer, with no hint.

After every local run, `record` lists the files (relative path and size) of each LIVE artifact
under the pipeline root in `<output_dir>/artifact_files.json`. Before the next cached run,
`retire_damaged` compares: an artifact with a file missing or of another size is marked DELETED
in ML Metadata, which TFX's cache lookup treats as no cached result, so the component that made
it runs again (and its consumers, whose inputs changed), with one line naming the artifact and
the files.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from absl import logging
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

MANIFEST_FILE = 'artifact_files.json'
_LIVE = metadata_store_pb2.Artifact.LIVE
# Listed files of one artifact shown in the message, at most.
_SHOWN = 3


def _files(uri: str) -> Dict[str, int]:
  """{path relative to uri: size} of every file under `uri` (a file artifact is itself)."""
  if os.path.isfile(uri):
    return {'': os.path.getsize(uri)}
  files = {}
  for directory, _, names in os.walk(uri):
    for name in names:
      path = os.path.join(directory, name)
      files[os.path.relpath(path, uri)] = os.path.getsize(path)
  return files


def _read_manifest(output_dir: str) -> Dict[str, Any]:
  path = os.path.join(output_dir, MANIFEST_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def record(store: metadata_store.MetadataStore, output_dir: str, pipeline_root: str) -> None:
  """Adds the files of each LIVE artifact under `pipeline_root` that the manifest does not list
  yet, and forgets artifacts that are no longer LIVE. Written atomically."""
  manifest = _read_manifest(output_dir)
  root = os.path.abspath(pipeline_root) + os.sep
  live = {str(a.id): a for a in store.get_artifacts()
          if a.state == _LIVE and a.uri.startswith(root)}
  manifest = {i: entry for i, entry in manifest.items() if i in live}
  for artifact_id, artifact in live.items():
    if artifact_id not in manifest and os.path.exists(artifact.uri):
      manifest[artifact_id] = {'uri': artifact.uri, 'files': _files(artifact.uri)}
  path = os.path.join(output_dir, MANIFEST_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(manifest, f, sort_keys=True)
  os.replace(path + '.tmp', path)


def _producer(store: metadata_store.MetadataStore, artifact_id: int) -> Dict[str, str]:
  """{'component', 'output'} of the execution that first wrote the artifact."""
  outputs = [e for e in store.get_events_by_artifact_ids([artifact_id])
             if e.type == metadata_store_pb2.Event.OUTPUT]
  if not outputs:
    return {'component': 'unknown', 'output': 'unknown'}
  event = min(outputs, key=lambda e: e.execution_id)
  node_type = store.get_context_type('node').id
  nodes = [c.name.split('.', 1)[-1] for c in store.get_contexts_by_execution(event.execution_id)
           if c.type_id == node_type]
  return {'component': nodes[0] if nodes else 'unknown',
          'output': event.path.steps[0].key if event.path.steps else 'unknown'}


def damaged(store: metadata_store.MetadataStore, output_dir: str) -> List[Dict[str, Any]]:
  """The LIVE artifacts whose files differ from what the manifest recorded: each with its id,
  uri, producer ('component', 'output') and the 'missing' and 'changed' relative paths."""
  manifest = _read_manifest(output_dir)
  if not manifest:
    return []
  artifacts = store.get_artifacts_by_id([int(i) for i in manifest])
  result = []
  for artifact in artifacts:
    if artifact.state != _LIVE:
      continue
    recorded = manifest[str(artifact.id)]['files']
    now = _files(artifact.uri) if os.path.exists(artifact.uri) else {}
    missing = sorted(p for p in recorded if p not in now)
    changed = sorted(p for p, size in recorded.items() if p in now and now[p] != size)
    if missing or changed:
      result.append(dict(_producer(store, artifact.id), id=artifact.id, uri=artifact.uri,
                         missing=missing, changed=changed, recorded=len(recorded)))
  return sorted(result, key=lambda d: d['id'])


def describe(entry: Dict[str, Any]) -> str:
  """One line: which artifact, which files, and what happens."""
  lost = entry['missing'] + entry['changed']
  shown = ', '.join(p or '(the file itself)' for p in lost[:_SHOWN])
  more = f' and {len(lost) - _SHOWN} more' if len(lost) > _SHOWN else ''
  kinds = ' and '.join(k for k, v in (('missing', entry['missing']),
                                      ('changed', entry['changed'])) if v)
  return (f"Re-creating {entry['component']}'s output {entry['output']}: {len(lost)} of its "
          f"{entry['recorded']} file(s) {kinds} since it was written ({shown}{more}) in "
          f"{entry['uri']}; {entry['component']} and what reads it run again")


def retire_damaged(store: metadata_store.MetadataStore, output_dir: str) -> List[Dict[str, Any]]:
  """Marks each damaged artifact DELETED in ML Metadata (so TFX's cache does not reuse it and
  its producer runs again), logs one line for each, and returns them."""
  entries = damaged(store, output_dir)
  if not entries:
    return []
  artifacts = store.get_artifacts_by_id([e['id'] for e in entries])
  for artifact in artifacts:
    artifact.state = metadata_store_pb2.Artifact.DELETED
  store.put_artifacts(artifacts)
  for entry in entries:
    logging.warning(describe(entry))
  return entries
