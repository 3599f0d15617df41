"""Faults: a run killed during training resumes from ML Metadata's cache and pushes once."""

import dataclasses
import glob
import os
import signal
import subprocess
import sys
import time

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components import serving_push
from conftest import REPO, copy_e2e_run
from pipeline.local_runner import metadata_config, run_local
from pipeline.serve_check import serve_check

_RUN_SCRIPT = '''
import sys
sys.path.insert(0, {repo!r})
import pipeline  # sets TF_USE_LEGACY_KERAS
from pipeline.config import PipelineConfig
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline.local_runner import metadata_config, run_local
with open({config_path!r}) as f:
  config = PipelineConfig.from_json(f.read())
run_local(config, {run_dir!r})
'''


def test_run_killed_during_training_resumes_from_cache_and_pushes_once(e2e_run, tmp_path):
  root = copy_e2e_run(e2e_run, tmp_path / 'killed')
  # A new training config, so the Trainer runs (ingestion and Transform stay cached), into an
  # empty push directory.
  config = e2e_run['config'].with_overrides(serving={'push_dir': str(root / 'serving-new')},
                                            training={'train_steps': 600})
  # 600 steps (long enough to kill the run mid-training) over this small log's ~1,300 clicked
  # training rows overfit dwell (eval RMSE ~43 s, train ~11 s): its threshold is not what
  # this test is about.
  config = dataclasses.replace(config, tasks=tuple(
      dataclasses.replace(t, thresholds={}) if t.name == 'dwell' else t for t in config.tasks))
  config_path = root / 'config.json'
  config_path.write_text(config.to_json())
  run_dir = root / 'run'
  pattern = str(run_dir / 'pipeline_root' / 'Trainer' / 'model_run' / '*' / '**' / 'events.*')
  copied = set(glob.glob(pattern, recursive=True))  # the shared run's own Trainer output
  process = subprocess.Popen(
      [sys.executable, '-c', _RUN_SCRIPT.format(repo=REPO, config_path=str(config_path),
                                                run_dir=str(run_dir))],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
  # Kill the whole run (SIGKILL: no clean-up) once this run's Trainer has written TensorBoard
  # events, i.e. in the middle of training.
  deadline = time.time() + 300
  while not set(glob.glob(pattern, recursive=True)) - copied:
    assert process.poll() is None, process.stderr.read()[-3000:]
    assert time.time() < deadline, 'training never started'
    time.sleep(0.2)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait(timeout=60)
  base = os.path.join(config.serving.push_dir, config.serving.model_name)
  assert serving_push.list_versions(base) == []  # nothing pushed, nothing half-written
  assert not os.path.exists(base) or os.listdir(base) == []

  store = metadata_store.MetadataStore(metadata_config(str(run_dir)))
  context = store.get_context_by_type_and_name('node', f'{config.name}.Trainer')
  killed = [e for e in store.get_executions_by_context(context.id)
            if e.last_known_state == metadata_store_pb2.Execution.RUNNING]
  assert len(killed) == 1  # the Trainer was running when the run died

  summary = run_local(config, str(run_dir))
  states = {name: c['state'] for name, c in summary['components'].items()}
  for name in ('LogExampleGen', 'StatisticsGen', 'StrictExampleValidator', 'Transform'):
    assert states[name] == 'CACHED', (name, states)
  assert states['Trainer'] == states['Pusher'] == 'COMPLETE', states
  assert summary['blessed'] and summary['push']['pushed'], summary['not_blessed_because']
  assert serving_push.list_versions(base) == [summary['push']['version']]
  assert sorted(os.listdir(base)) == [str(summary['push']['version'])]
  assert serve_check(summary['push']['path'])['ok']
