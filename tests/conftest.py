"""Shared fixtures. One small end-to-end pipeline run serves every test that inspects a run."""

import os

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import dataclasses  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

from pipeline.config import PipelineConfig, Threshold, load_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CONFIG = os.path.join(REPO, 'schemas', 'impressions.yaml')

# Lines that ingestion must quarantine (reason expected), mixed into the end-to-end log.
BAD_LINES = [
    (b'{"user_id": "u1", "item_id": "i1"', 'malformed_json'),
    (b'{"user_id": "u00001", "user_segment": "s1", "item_id": "i00001", "item_category": "c01",'
     b' "item_price": 10.0, "device": "ios", "hour": 3, "position": 2, "conversion": 0,'
     b' "dwell_seconds": 0.0}', 'missing_field:click'),
    (b'{"user_id": "u00002", "user_segment": "s1", "item_id": "i00001", "item_category": "c01",'
     b' "item_price": 10.0, "device": "ios", "hour": 3, "position": 2, "click": "yes",'
     b' "conversion": 0, "dwell_seconds": 0.0}', 'bad_type:click'),
]


TINY_FEATURES = [{'name': 'user', 'type': 'categorical', 'embedding_dim': 4},
                 {'name': 'device', 'type': 'categorical', 'embedding_dim': 2},
                 {'name': 'position', 'type': 'numeric'}]


def tiny_config(name: str, tasks, training=None, model=None, features=None) -> PipelineConfig:
  """A small config of the training-step tests: `features` (default: a 12-user and a 4-device
  categorical and a numeric position), a 16-unit trunk unless `model` says otherwise."""
  from pipeline.config import parse_config  # pylint: disable=g-import-not-at-top
  return parse_config({
      'name': name, 'data': {'input_base': '/unused', 'split_key': 'user'},
      'features': features or TINY_FEATURES, 'tasks': tasks,
      'model': dict({'trunk_units': [16]}, **(model or {})), 'training': training or {}})


def tiny_model(config: PipelineConfig, cardinalities, seed: int = 1):
  """A compiled MultiTaskModel of `config`'s network (the real training step), seeded."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.model import MultiTaskModel  # pylint: disable=g-import-not-at-top
  from trainer.models import build_network  # pylint: disable=g-import-not-at-top
  tf.keras.utils.set_random_seed(seed)
  model = MultiTaskModel(build_network(config, cardinalities), config)
  model.compile(optimizer=model.group_optimizers['trunk'])
  return model


def sample_config(**sections) -> PipelineConfig:
  """The shipped sample config, with some sections' keys replaced."""
  config = load_config(SAMPLE_CONFIG, base_dir=REPO)
  return config.with_overrides(**sections) if sections else config


@pytest.fixture(scope='session')
def sample_config_obj() -> PipelineConfig:
  return sample_config()


@pytest.fixture(scope='session')
def e2e_run(tmp_path_factory):
  """Generates a small log (plus a few bad lines), runs the whole pipeline once, locally."""
  from pipeline.local_runner import run_local  # pylint: disable=g-import-not-at-top
  from pipeline.sample_logs import generate_logs  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('e2e')
  logs = root / 'logs'
  written = generate_logs(str(logs), rows=8000, days=2, seed=11)
  bad_dir = logs / 'day=2026-11-03'
  bad_dir.mkdir()
  with gzip.open(bad_dir / 'impressions.jsonl.gz', 'wb') as f:
    f.write(b'\n'.join(line for line, _ in BAD_LINES) + b'\n')
  config = sample_config(
      data={'input_base': str(logs)},
      serving={'push_dir': str(root / 'serving'), 'score': {
          'weights': {'click': 1.0, 'conversion': 0.1}, 'label': 'click', 'group_by': 'user_id',
          'thresholds': {'auc': {'min': 0.55}}, 'max_regression': {'auc': 0.05}}},
      training={'train_steps': 120, 'eval_steps': 40},
      evaluation={'slices': ['device']})
  # Small data: bless on "clearly better than chance" rather than the production thresholds.
  tasks = tuple(dataclasses.replace(t, thresholds={'auc': Threshold(min=0.55)})
                if t.type == 'binary' else t for t in config.tasks)
  config = dataclasses.replace(config, tasks=tasks)
  summary = run_local(config, str(root / 'run'))
  return {'config': config, 'summary': summary, 'root': root, 'run_dir': root / 'run',
          'truth_dir': written['truth_dir'], 'logs': logs}


def run_components(config, output_dir, components):
  """Runs a pipeline of some components under TFX's LocalDagRunner, as run_local runs the
  whole one (ML Metadata and pipeline root in `output_dir`); returns its ML Metadata store."""
  import sys  # pylint: disable=g-import-not-at-top
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
  from pipeline.beam_args import beam_pipeline_args  # pylint: disable=g-import-not-at-top
  from pipeline.local_runner import metadata_config  # pylint: disable=g-import-not-at-top
  pipeline = tfx.dsl.Pipeline(
      pipeline_name=config.name,
      pipeline_root=os.path.join(str(output_dir), 'pipeline_root'),
      components=list(components),
      metadata_connection_config=metadata_config(str(output_dir)),
      beam_pipeline_args=beam_pipeline_args(config.beam))
  caller_argv, sys.argv = sys.argv, sys.argv[:1]  # TFX's Beam executors parse sys.argv
  try:
    tfx.orchestration.LocalDagRunner().run(pipeline)
  finally:
    sys.argv = caller_argv
  return mlmd_store(output_dir)


def mlmd_store(run_dir):
  """The ML Metadata store of a local run (its SQLite file)."""
  from ml_metadata.metadata_store import metadata_store  # pylint: disable=g-import-not-at-top
  from pipeline.local_runner import metadata_config  # pylint: disable=g-import-not-at-top
  return metadata_store.MetadataStore(metadata_config(str(run_dir)))


def output_uri(e2e_run, node, key):
  """URI of a node's output artifact in the shared run, as ML Metadata records it."""
  from pipeline.run_summary import read_run  # pylint: disable=g-import-not-at-top
  nodes = read_run(mlmd_store(e2e_run['run_dir']), e2e_run['config'].name)['nodes']
  [artifact] = nodes[node]['outputs'][key]
  return artifact.uri


def eval_rows(e2e_run, fields):
  """The shared run's eval split: its serialized examples, and {field: NumPy array of each
  example's first value} for the named fields (strings decoded)."""
  import glob  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  split = os.path.join(output_uri(e2e_run, 'LogExampleGen', 'examples'), 'Split-eval')
  records, values = [], {field: [] for field in fields}
  for path in sorted(glob.glob(os.path.join(split, '*.gz'))):
    for record in tf.data.TFRecordDataset(path, compression_type='GZIP'):
      example = tf.train.Example.FromString(record.numpy())
      records.append(record.numpy())
      for field in fields:
        feature = example.features.feature[field]
        value = (feature.bytes_list.value or feature.int64_list.value or
                 feature.float_list.value)[0]
        values[field].append(value.decode() if isinstance(value, bytes) else value)
  return records, {field: np.array(v) for field, v in values.items()}


def copy_e2e_run(e2e_run, dest):
  """A copy of the shared run's directory (ML Metadata and artifacts) and serving directory,
  so a test can run the pipeline again with cached ingestion and Transform without changing
  what other tests read. Returns `dest`, holding `run/` and `serving/`."""
  dest.mkdir(parents=True)
  shutil.copytree(e2e_run['run_dir'], dest / 'run')
  shutil.copytree(e2e_run['root'] / 'serving', dest / 'serving')
  return dest


def prediction_differences(e2e_run, model_dir, count=500):
  """Per task, the mean relative difference between the predictions of the serving model in
  `model_dir` and of the shared run's Trainer model, on the first `count` records of the
  shared log (serialized tf.Examples through `serving_default`)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from components.records import record_to_example  # pylint: disable=g-import-not-at-top
  from trainer.export import SERVING_SIGNATURE  # pylint: disable=g-import-not-at-top
  config = e2e_run['config']
  path = sorted(str(p) for p in e2e_run['logs'].glob('day=2026-11-01/*.gz'))[0]
  with gzip.open(path, 'rt') as f:
    records = [json.loads(next(f)) for _ in range(count)]
  examples = tf.constant([record_to_example(r, config, with_labels=False).SerializeToString()
                          for r in records])

  def predict(directory):
    loaded = tf.saved_model.load(directory, tags=['serve'])
    return {k: v.numpy() for k, v in loaded.signatures[SERVING_SIGNATURE](
        examples=examples).items()}

  mine = predict(model_dir)
  theirs = predict(os.path.join(output_uri(e2e_run, 'Trainer', 'model'), 'Format-Serving'))
  return {task.name: float(np.abs(mine[task.name] - theirs[task.name]).mean()) /
          max(float(np.abs(theirs[task.name]).mean()), 1e-6) for task in config.tasks}
