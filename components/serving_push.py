"""The push directory TF Serving watches: versions, atomic pushes, retention, models.config.

Layout (TF Serving's file-system source loads numbered directories under a model's base path):

    <push_dir>/models.config                 TF Serving --model_config_file
    <push_dir>/<model_name>/<version>/       a complete SavedModel, versions increasing
    <push_dir>/<model_name>/.staging-*/      a push in progress (not a number: never loaded)

A push copies the model into a staging directory next to the versions, then renames it to its
version number: on a POSIX file system (a local disk or a mounted volume) the rename is atomic,
so a version directory appears complete or not at all, and an interrupted push leaves only a
staging directory, which is not a version (and which later pushes clean up). The version number
is taken under an exclusive lock on `<push_dir>/.push.lock`, so two runs pushing at the same
time never take the same number, and `models.config` always lists what is on disk.

Object stores (`gs://`, `s3://`) have no directory rename: there the version is copied
file by file with `saved_model.pb` last (TF Serving only loads a directory holding it), and
concurrent pushes must be excluded by the scheduler (the recurring Kubeflow run has
max_concurrency 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
import uuid
from typing import Dict, Iterator, List, Mapping, Optional

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

MODELS_CONFIG_FILE = 'models.config'
LOCK_FILE = '.push.lock'
STAGING_PREFIX = '.staging-'
DELETING_PREFIX = '.deleting-'
STABLE = 'stable'
CANARY = 'canary'
# A staging directory this old belongs to a push that died; one in progress is younger.
STALE_STAGING_SECONDS = 6 * 3600


@dataclasses.dataclass(frozen=True)
class PushResult:
  version: int
  path: str
  labels: Dict[str, int]
  deleted_versions: List[int]


def is_remote(path: str) -> bool:
  return '://' in path


def list_versions(model_base_dir: str) -> List[int]:
  """Version numbers under a model's base path, ascending (staging dirs are not versions)."""
  if not tf.io.gfile.isdir(model_base_dir):
    return []
  return sorted(int(name.rstrip('/')) for name in tf.io.gfile.listdir(model_base_dir)
                if name.rstrip('/').isdigit())


def models_config_path(push_dir: str) -> str:
  return os.path.join(push_dir, MODELS_CONFIG_FILE)


def read_labels(push_dir: str, model_name: str) -> Dict[str, int]:
  """Version labels of `model_name` in `<push_dir>/models.config` ({} without the file)."""
  for model in _read_models_config(push_dir).model_config_list.config:
    if model.name == model_name:
      return dict(model.version_labels)
  return {}


def served_version(push_dir: str, model_name: str) -> Optional[int]:
  """The version clients get by default: the `stable` label, else the newest version."""
  base = os.path.join(push_dir, model_name)
  versions = list_versions(base)
  stable = read_labels(push_dir, model_name).get(STABLE)
  if stable in versions:
    return stable
  return versions[-1] if versions else None


def _read_models_config(push_dir: str) -> model_server_config_pb2.ModelServerConfig:
  config = model_server_config_pb2.ModelServerConfig()
  path = models_config_path(push_dir)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      text_format.Parse(f.read(), config)
  return config


def render_models_config(push_dir: str, model_name: str, model_base_dir: str,
                         labels: Mapping[str, int]) -> str:
  """TF Serving's ModelServerConfig with this model's entry (re)written: the labelled
  versions are the ones loaded. Other models' entries in the file are kept."""
  config = _read_models_config(push_dir)
  entries = config.model_config_list.config
  kept = [m for m in entries if m.name != model_name]
  del entries[:]
  entries.extend(kept)
  model = entries.add()
  model.name = model_name
  model.base_path = model_base_dir
  model.model_platform = 'tensorflow'
  model.model_version_policy.specific.versions.extend(sorted(set(labels.values())))
  for label, version in sorted(labels.items()):
    model.version_labels[label] = version
  return text_format.MessageToString(config)


def _write_atomically(path: str, text: str) -> None:
  if is_remote(path):
    with tf.io.gfile.GFile(path, 'w') as f:  # object stores replace whole objects
      f.write(text)
    return
  temp = f'{path}.{uuid.uuid4().hex}.tmp'
  with open(temp, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temp, path)


@contextlib.contextmanager
def push_lock(push_dir: str) -> Iterator[None]:
  """Exclusive across processes on one host or a shared POSIX volume; no-op remotely."""
  if is_remote(push_dir):
    yield
    return
  import fcntl  # POSIX only; imported here so the module loads anywhere
  os.makedirs(push_dir, exist_ok=True)
  with open(os.path.join(push_dir, LOCK_FILE), 'a') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def copy_tree(src: str, dst: str) -> None:
  """Copies a directory (local or remote), `saved_model.pb` last."""
  tf.io.gfile.makedirs(dst)
  last = []
  for dirpath, _, filenames in tf.io.gfile.walk(src):
    rel = os.path.relpath(dirpath, src)
    target_dir = dst if rel == '.' else os.path.join(dst, rel)
    tf.io.gfile.makedirs(target_dir)
    for name in filenames:
      pair = (os.path.join(dirpath, name), os.path.join(target_dir, name))
      if rel == '.' and name == 'saved_model.pb':
        last.append(pair)
      else:
        tf.io.gfile.copy(*pair, overwrite=True)
  for pair in last:
    tf.io.gfile.copy(*pair, overwrite=True)


def _remove_tree(path: str) -> None:
  if is_remote(path):
    tf.io.gfile.rmtree(path)
  else:
    shutil.rmtree(path, ignore_errors=True)


def _clean_stale_staging(model_base_dir: str) -> None:
  if is_remote(model_base_dir) or not os.path.isdir(model_base_dir):
    return
  now = time.time()
  for name in os.listdir(model_base_dir):
    path = os.path.join(model_base_dir, name)
    if name.startswith(DELETING_PREFIX) or (
        name.startswith(STAGING_PREFIX) and now - os.path.getmtime(path) > STALE_STAGING_SECONDS):
      shutil.rmtree(path, ignore_errors=True)


def _delete_version(model_base_dir: str, version: int) -> None:
  path = os.path.join(model_base_dir, str(version))
  if is_remote(path):
    tf.io.gfile.rmtree(path)
    return
  # Renamed away first, so the version disappears at once rather than file by file.
  doomed = os.path.join(model_base_dir, f'{DELETING_PREFIX}{version}-{uuid.uuid4().hex}')
  os.rename(path, doomed)
  shutil.rmtree(doomed, ignore_errors=True)


def _next_version(existing: List[int]) -> int:
  # Seconds since the epoch, like TFX's Pusher, but always above every existing version.
  return max([int(time.time())] + [v + 1 for v in existing])


def _labels_after_push(previous: Mapping[str, int], versions: List[int], new_version: int,
                       canary: bool) -> Dict[str, int]:
  if not canary:
    return {STABLE: new_version}
  stable = previous.get(STABLE)
  if stable not in versions or stable == new_version:
    return {STABLE: new_version}  # nothing proven yet: the first version is both
  return {STABLE: stable, CANARY: new_version}


def push_version(model_dir: str, push_dir: str, model_name: str, keep_versions: int,
                 canary: bool = False, extra_files: Optional[Mapping[str, bytes]] = None
                 ) -> PushResult:
  """Pushes the SavedModel in `model_dir` as a new version; see the module docstring.

  `extra_files` ({relative path: content}) are written into the version before it appears,
  e.g. `assets.extra/tf_serving_warmup_requests`.
  """
  base = os.path.join(push_dir, model_name)
  tf.io.gfile.makedirs(base)
  staging = os.path.join(base, f'{STAGING_PREFIX}{uuid.uuid4().hex}')
  try:
    copy_tree(model_dir, staging)
    for rel_path, content in (extra_files or {}).items():
      target = os.path.join(staging, rel_path)
      tf.io.gfile.makedirs(os.path.dirname(target))
      with tf.io.gfile.GFile(target, 'wb') as f:
        f.write(content)
    with push_lock(push_dir):
      previous_labels = read_labels(push_dir, model_name)
      version = _next_version(list_versions(base))
      final = os.path.join(base, str(version))
      if is_remote(base):
        copy_tree(staging, final)
        _remove_tree(staging)
      else:
        os.rename(staging, final)  # atomic: the version is complete or absent
      versions = list_versions(base)
      labels = _labels_after_push(previous_labels, versions, version, canary)
      keep = set(versions[-keep_versions:]) | set(labels.values())
      deleted = [v for v in versions if v not in keep]
      for old in deleted:
        _delete_version(base, old)
      _write_atomically(models_config_path(push_dir),
                        render_models_config(push_dir, model_name, base, labels))
      _clean_stale_staging(base)
  finally:
    if tf.io.gfile.exists(staging):
      _remove_tree(staging)
  return PushResult(version=version, path=final, labels=labels, deleted_versions=deleted)
