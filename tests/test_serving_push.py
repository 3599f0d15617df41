"""The push directory: atomic versions, retention, models.config labels, concurrent pushes."""

import os
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from components import serving_push

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def saved_model(tmp_path_factory):
  """A small real SavedModel (a few files and a variables directory)."""
  path = str(tmp_path_factory.mktemp('model') / 'model')
  module = tf.Module()
  module.scale = tf.Variable(2.0)
  module.serve = tf.function(lambda x: {'y': x * module.scale},
                             input_signature=[tf.TensorSpec([None], tf.float32)])
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
  return path


def _models_config(push_dir):
  config = model_server_config_pb2.ModelServerConfig()
  with open(os.path.join(push_dir, 'models.config')) as f:
    text_format.Parse(f.read(), config)
  return config


def _entries(base):
  return sorted(os.listdir(base))


def test_versions_increase_and_only_the_newest_k_are_kept(saved_model, tmp_path):
  push_dir = str(tmp_path / 'serving')
  results = [serving_push.push_version(saved_model, push_dir, 'm', keep_versions=2)
             for _ in range(4)]
  versions = [r.version for r in results]
  assert versions == sorted(set(versions)), versions
  base = os.path.join(push_dir, 'm')
  assert serving_push.list_versions(base) == versions[-2:]
  assert _entries(base) == sorted(str(v) for v in versions[-2:])  # no staging left
  assert results[2].deleted_versions == [versions[0]]
  assert results[3].deleted_versions == [versions[1]]
  for version in versions[-2:]:
    assert tf.saved_model.load(os.path.join(base, str(version))).signatures['serving_default']
  [model] = _models_config(push_dir).model_config_list.config
  assert model.name == 'm' and model.base_path == base and model.model_platform == 'tensorflow'
  assert dict(model.version_labels) == {'stable': versions[-1]}
  assert list(model.model_version_policy.specific.versions) == [versions[-1]]
  assert serving_push.served_version(push_dir, 'm') == versions[-1]


def test_canary_labels_newest_canary_and_keeps_stable(saved_model, tmp_path):
  push_dir = str(tmp_path / 'serving')
  first = serving_push.push_version(saved_model, push_dir, 'm', keep_versions=1, canary=True)
  assert first.labels == {'stable': first.version}
  second = serving_push.push_version(saved_model, push_dir, 'm', keep_versions=1, canary=True)
  assert second.labels == {'stable': first.version, 'canary': second.version}
  # The stable version is kept although keep_versions is 1: it is labelled.
  assert serving_push.list_versions(os.path.join(push_dir, 'm')) == [first.version,
                                                                     second.version]
  [model] = _models_config(push_dir).model_config_list.config
  assert list(model.model_version_policy.specific.versions) == [first.version, second.version]
  # The served (baseline) version is the stable one, not the canary.
  assert serving_push.served_version(push_dir, 'm') == first.version


def test_models_config_keeps_other_models(saved_model, tmp_path):
  push_dir = str(tmp_path / 'serving')
  serving_push.push_version(saved_model, push_dir, 'a', keep_versions=2)
  serving_push.push_version(saved_model, push_dir, 'b', keep_versions=2)
  serving_push.push_version(saved_model, push_dir, 'a', keep_versions=2)
  names = [m.name for m in _models_config(push_dir).model_config_list.config]
  assert sorted(names) == ['a', 'b']


def test_extra_files_are_inside_the_version_when_it_appears(saved_model, tmp_path):
  push_dir = str(tmp_path / 'serving')
  result = serving_push.push_version(saved_model, push_dir, 'm', keep_versions=2,
                                     extra_files={'assets.extra/warmup': b'abc'})
  with open(os.path.join(result.path, 'assets.extra', 'warmup'), 'rb') as f:
    assert f.read() == b'abc'


def test_interrupted_push_leaves_no_version(saved_model, tmp_path, monkeypatch):
  push_dir = str(tmp_path / 'serving')
  good = serving_push.push_version(saved_model, push_dir, 'm', keep_versions=3)
  config_before = open(os.path.join(push_dir, 'models.config')).read()
  real_copy = tf.io.gfile.copy
  copied = []

  def copy_then_fail(src, dst, overwrite=False):
    if len(copied) == 2:
      raise OSError('disk full (simulated, after a partial copy)')
    copied.append(dst)
    real_copy(src, dst, overwrite=overwrite)

  monkeypatch.setattr(tf.io.gfile, 'copy', copy_then_fail)
  with pytest.raises(OSError, match='simulated'):
    serving_push.push_version(saved_model, push_dir, 'm', keep_versions=3)
  assert len(copied) == 2  # the failure came midway through the copy
  base = os.path.join(push_dir, 'm')
  assert _entries(base) == [str(good.version)]  # no new version, no staging directory
  assert open(os.path.join(push_dir, 'models.config')).read() == config_before


_PUSH_SCRIPT = '''
import os, sys, time
sys.path.insert(0, {repo!r})
from components import serving_push
open({ready!r} + str(os.getpid()), 'w').close()
while not os.path.exists({go!r}):  # all processes start pushing at the same moment
  time.sleep(0.001)
result = serving_push.push_version({model!r}, {push_dir!r}, 'm', keep_versions=10)
print(result.version)
'''


def test_concurrent_pushes_take_distinct_versions(saved_model, tmp_path):
  """Separate processes push at the same moment: each gets its own complete version, and
  models.config names the newest."""
  push_dir = str(tmp_path / 'serving')
  ready, go = str(tmp_path / 'ready-'), str(tmp_path / 'go')
  script = _PUSH_SCRIPT.format(repo=REPO, ready=ready, go=go, model=saved_model,
                               push_dir=push_dir)
  processes = [subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
  deadline = time.time() + 120
  while len([p for p in os.listdir(tmp_path) if p.startswith('ready-')]) < 3:
    assert time.time() < deadline and all(p.poll() is None for p in processes), \
        'a pushing process did not start'
    time.sleep(0.05)
  open(go, 'w').close()
  versions = []
  for process in processes:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    versions.append(int(out.strip().splitlines()[-1]))
  assert len(set(versions)) == 3, versions
  base = os.path.join(push_dir, 'm')
  assert serving_push.list_versions(base) == sorted(versions)
  assert _entries(base) == sorted(str(v) for v in versions)
  for version in versions:
    tf.saved_model.load(os.path.join(base, str(version)))  # each one complete
  [model] = _models_config(push_dir).model_config_list.config
  assert dict(model.version_labels) == {'stable': max(versions)}
