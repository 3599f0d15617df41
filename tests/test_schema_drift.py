"""Schema drift: a new day of logs that drifted, changed a column's type or lost a feature stops
the run before Transform, naming the feature and the anomaly; a listed anomaly kind is accepted.

Each run copies the shared end-to-end run (its ML Metadata, artifacts and the statistics its
validator kept) and adds one new day to a copy of its logs.
"""

import gzip
import json
import shutil

import pytest
from ml_metadata.metadata_store import metadata_store

from components import strict_example_validator
from conftest import copy_e2e_run
from pipeline.local_runner import PipelineRunError, metadata_config, run_local
from pipeline.pipeline import create_pipeline
from pipeline.run_summary import read_run
from pipeline.sample_logs import generate_logs

NEW_DAY = '2026-11-04'


def _run_with_new_day(e2e_run, root, rewrite, config):
  """Copies the shared run, adds a rewritten new day to a copy of its logs and runs the
  pipeline, which must fail; returns the PipelineRunError."""
  copy = copy_e2e_run(e2e_run, root)
  logs = copy / 'logs'
  shutil.copytree(e2e_run['logs'], logs)
  generated = generate_logs(str(copy / 'new'), rows=3000, days=1, seed=5, start_date=NEW_DAY)
  [path] = generated['log_files']
  with gzip.open(path, 'rt') as f:
    records = [rewrite(i, json.loads(line)) for i, line in enumerate(f)]
  (logs / f'day={NEW_DAY}').mkdir()
  with gzip.open(logs / f'day={NEW_DAY}' / 'impressions.jsonl.gz', 'wt') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in records))
  config = config.with_overrides(data={'input_base': str(logs)},
                                 serving={'push_dir': str(copy / 'serving')})
  with pytest.raises(PipelineRunError) as e:
    run_local(config, str(copy / 'run'))
  return e.value


def _states(error):
  return {name: c['state'] for name, c in error.summary['components'].items()}


@pytest.fixture(scope='module')
def category_burst(e2e_run, tmp_path_factory):
  """The new day's item category is mostly one value never seen before (the sample config
  has item_category max_drift 0.1)."""
  def rewrite(i, record):
    if i % 10:
      record['item_category'] = 'brand-new'
    return record

  config = e2e_run['config']
  assert config.features[2].name == 'item_category' and config.features[2].max_drift == 0.1
  root = tmp_path_factory.mktemp('drift') / 'burst'
  return config, root, _run_with_new_day(e2e_run, root, rewrite, config)


def test_category_burst_stops_before_transform_naming_the_feature(category_burst):
  _, _, error = category_burst
  message = str(error)
  assert 'item_category' in message and 'COMPARATOR_L_INFTY_HIGH' in message, message
  assert 'previous span' in message and 'data.accept_anomalies' in message
  states = _states(error)
  assert states['StrictExampleValidator'] == 'FAILED', states
  assert states.get('Transform') != 'COMPLETE', states


def test_accepted_anomaly_kind_lets_the_run_go_on(category_burst):
  """The real validator executor, on the statistics of the failed run, with the kind listed
  in data.accept_anomalies: no error, and the accepted anomaly is recorded."""
  config, root, _ = category_burst
  store = metadata_store.MetadataStore(metadata_config(str(root / 'run')))
  nodes = read_run(store, config.name)['nodes']
  from tfx.types import artifact_utils  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_artifacts  # pylint: disable=g-import-not-at-top
  from tfx.types import standard_component_specs as specs  # pylint: disable=g-import-not-at-top

  def artifact(node, key, cls):
    a = cls()
    a.set_mlmd_artifact(nodes[node]['outputs'][key][0])
    return a

  statistics = artifact('StatisticsGen', 'statistics', standard_artifacts.ExampleStatistics)
  schema = artifact('ImportSchemaGen', 'schema', standard_artifacts.Schema)
  examples = artifact('LogExampleGen', 'examples', standard_artifacts.Examples)  # its span
  anomalies = standard_artifacts.ExampleAnomalies()
  anomalies.uri = str(root / 'accepted_anomalies')
  anomalies.split_names = artifact_utils.encode_split_names(['train', 'eval'])
  for split in ('train', 'eval'):
    (root / 'accepted_anomalies' / f'Split-{split}').mkdir(parents=True)
  [validator] = [c for c in create_pipeline(config, str(root / 'run' / 'pipeline_root')).components
                 if c.id == 'StrictExampleValidator']
  properties = dict(validator.exec_properties)
  with pytest.raises(strict_example_validator.DataAnomaliesError):
    strict_example_validator.Executor().Do(
        {specs.STATISTICS_KEY: [statistics], specs.SCHEMA_KEY: [schema],
         strict_example_validator.EXAMPLES_KEY: [examples]},
        {specs.ANOMALIES_KEY: [anomalies]}, properties)
  properties[strict_example_validator.ACCEPT_KEY] = json.dumps(['COMPARATOR_L_INFTY_HIGH'])
  strict_example_validator.Executor().Do(
      {specs.STATISTICS_KEY: [statistics], specs.SCHEMA_KEY: [schema],
       strict_example_validator.EXAMPLES_KEY: [examples]},
      {specs.ANOMALIES_KEY: [anomalies]}, properties)
  accepted = json.loads(anomalies.get_string_custom_property(
      strict_example_validator.ACCEPTED_PROPERTY))
  assert any('item_category' in line and 'COMPARATOR_L_INFTY_HIGH' in line
             for line in accepted), accepted


def test_type_change_and_missing_feature_stop_at_ingestion_naming_the_fields(
    e2e_run, tmp_path):
  """A column that turns into strings and a feature that disappears are caught by the config
  when each record is read, even earlier than by the validator: the run stops before Transform
  and the error names both fields."""
  def rewrite(i, record):
    if i % 2:
      record['item_price'] = str(record['item_price'])
    else:
      del record['device']
    return record

  error = _run_with_new_day(e2e_run, tmp_path / 'types', rewrite, e2e_run['config'])
  message = str(error)
  assert 'bad_type:item_price (1500)' in message, message
  assert 'missing_field:device (1500)' in message, message
  states = _states(error)
  assert states['LogExampleGen'] == 'FAILED' and 'Transform' not in states, states
