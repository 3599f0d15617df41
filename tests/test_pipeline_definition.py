"""create_pipeline is a pure function of the config; its graph and TFMA config follow the tasks."""

import dataclasses
import tensorflow_model_analysis as tfma

from conftest import sample_config
from pipeline.pipeline import build_eval_config, create_pipeline


def _ids(pipeline):
  return [c.id for c in pipeline.components]


def test_graph_with_curated_schema(tmp_path):
  pipeline = create_pipeline(sample_config(), str(tmp_path / 'root'))
  assert sorted(_ids(pipeline)) == sorted([
      'LogExampleGen', 'StatisticsGen', 'ImportSchemaGen', 'StrictExampleValidator',
      'Transform', 'Trainer', 'Evaluator', 'Pusher'])
  [transform] = [c for c in pipeline.components if c.id == 'Transform']
  assert 'StrictExampleValidator' in {n.id for n in transform.upstream_nodes}
  assert not any('Resolver' in type(c).__name__ for c in pipeline.components)
  assert not (tmp_path / 'root').exists()  # building the pipeline writes nothing


def test_graph_infers_schema_when_none_is_curated(tmp_path):
  pipeline = create_pipeline(sample_config(data={'schema': None}), str(tmp_path))
  assert 'SchemaGen' in _ids(pipeline) and 'ImportSchemaGen' not in _ids(pipeline)


def test_eval_config_has_one_metrics_spec_per_task_with_its_thresholds():
  config = sample_config()
  eval_config = build_eval_config(config)
  [model_spec] = eval_config.model_specs
  assert dict(model_spec.label_keys) == {'click': 'click', 'conversion': 'conversion',
                                         'dwell': 'dwell_seconds'}
  specs = {tuple(s.output_names): s for s in eval_config.metrics_specs}
  assert set(specs) == {('click',), ('conversion',), ('dwell',)}
  click = {m.class_name: m for m in specs[('click',)].metrics}
  assert click['AUC'].threshold.value_threshold.lower_bound.value == 0.6
  assert click['Calibration'].threshold.value_threshold.upper_bound.value == 1.3
  dwell = {m.class_name: m for m in specs[('dwell',)].metrics}
  assert dwell['RootMeanSquaredError'].threshold.value_threshold.upper_bound.value == 30.0
  assert 'AUC' not in dwell
  assert isinstance(eval_config, tfma.EvalConfig)


def test_eval_config_compares_each_task_with_the_served_model():
  """Change thresholds (candidate - baseline) in each metric's better direction."""
  config = sample_config()
  specs = {tuple(s.output_names): {m.class_name: m for m in s.metrics}
           for s in build_eval_config(config).metrics_specs}
  auc = specs[('click',)]['AUC'].threshold.change_threshold
  assert auc.direction == tfma.MetricDirection.HIGHER_IS_BETTER
  assert auc.absolute.value == -0.01 and not auc.HasField('relative')
  rmse = specs[('dwell',)]['RootMeanSquaredError'].threshold.change_threshold
  assert rmse.direction == tfma.MetricDirection.LOWER_IS_BETTER
  assert rmse.relative.value == 0.02 and not rmse.HasField('absolute')
  assert not specs[('click',)]['Calibration'].threshold.HasField('change_threshold')


def test_ingestion_and_transform_see_only_the_data_view(tmp_path):
  """A training-only change must not invalidate the cached ingestion and Transform."""
  def params(config):
    pipeline = create_pipeline(config, str(tmp_path))
    return {c.id: c.exec_properties for c in pipeline.components
            if c.id in ('LogExampleGen', 'Transform')}

  base = sample_config()
  changed = sample_config(training={'train_steps': 5, 'loss_weighting': 'equal'},
                          model={'trunk_units': [8]}, serving={'model_name': 'other'})
  assert params(base) == params(changed)
  # An embedding width is the model's: neither ingestion nor Transform sees it. How Transform
  # encodes a feature (buckets, scaling, vocabulary) re-runs Transform, not ingestion.
  wider = dataclasses.replace(base, features=tuple(
      dataclasses.replace(f, embedding_dim=f.embedding_dim + 1) for f in base.features))
  assert params(base) == params(wider)
  periodic = dataclasses.replace(base, features=tuple(
      dataclasses.replace(f, periodic=8, periodic_scale=0.5) if f.type == 'numeric' else f
      for f in base.features))
  assert params(base) == params(periodic)
  bucketed = dataclasses.replace(base, features=tuple(
      dataclasses.replace(f, buckets=4) if f.type == 'numeric' else
      dataclasses.replace(f, oov_buckets=f.oov_buckets + 1) for f in base.features))
  assert params(base)['LogExampleGen'] == params(bucketed)['LogExampleGen']
  assert params(base)['Transform'] != params(bucketed)['Transform']
