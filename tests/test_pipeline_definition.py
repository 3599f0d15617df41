"""create_pipeline is a pure function of the config; its graph and TFMA config follow the tasks."""

import dataclasses
import json

import tensorflow_model_analysis as tfma

from conftest import sample_config
from components.served_baseline_evaluator import overall_threshold
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
  # every task's output, and the sample config's ranking score against the conversion label
  assert dict(model_spec.label_keys) == {'click': 'click', 'conversion': 'conversion',
                                         'dwell': 'dwell_seconds', 'score': 'conversion'}
  # conversion and dwell on their space (after a click); click and the score on every row
  assert dict(model_spec.example_weight_keys) == {'conversion': 'conversion__weight',
                                                  'dwell': 'dwell__weight'}
  specs = {tuple(s.output_names): s for s in eval_config.metrics_specs if not s.query_key}
  assert set(specs) == {('click',), ('conversion',), ('dwell',), ('score',)}
  assert {m.class_name for m in specs[('score',)].metrics} == {
      'ExampleCount', 'AUC', 'MeanPrediction', 'MeanLabel'}
  # NDCG@10 per user: its own spec, grouped by the query key, the score's label as the gains
  [ranking] = [s for s in eval_config.metrics_specs if s.query_key]
  assert ranking.query_key == 'user_id' and list(ranking.output_names) == ['score']
  [ndcg] = ranking.metrics
  assert ndcg.class_name == 'NDCG'
  assert json.loads(ndcg.config) == {'gain_key': 'conversion', 'top_k_list': [10]}
  click = {m.class_name: m for m in specs[('click',)].metrics}
  assert overall_threshold(click['AUC']).value_threshold.lower_bound.value == 0.6
  assert overall_threshold(click['Calibration']).value_threshold.upper_bound.value == 1.3
  dwell = {m.class_name: m for m in specs[('dwell',)].metrics}
  assert overall_threshold(
      dwell['RootMeanSquaredError']).value_threshold.upper_bound.value == 30.0
  assert 'AUC' not in dwell
  assert isinstance(eval_config, tfma.EvalConfig)


def test_eval_config_compares_each_task_with_the_served_model():
  """Change thresholds (candidate - baseline) in each metric's better direction."""
  config = sample_config()
  specs = {tuple(s.output_names): {m.class_name: m for m in s.metrics}
           for s in build_eval_config(config).metrics_specs}
  auc = overall_threshold(specs[('click',)]['AUC']).change_threshold
  assert auc.direction == tfma.MetricDirection.HIGHER_IS_BETTER
  assert auc.absolute.value == -0.01 and not auc.HasField('relative')
  rmse = overall_threshold(specs[('dwell',)]['RootMeanSquaredError']).change_threshold
  assert rmse.direction == tfma.MetricDirection.LOWER_IS_BETTER
  assert rmse.relative.value == 0.02 and not rmse.HasField('absolute')
  assert not overall_threshold(specs[('click',)]['Calibration']).HasField('change_threshold')


def test_slices_are_computed_for_every_metric_and_thresholds_stay_on_the_overall_slice():
  """TFMA applies a MetricConfig's plain `threshold` to every slice; the task's thresholds
  are per-slice thresholds on the overall slice, so a 20-example slice cannot fail a run."""
  config = sample_config(evaluation={'slices': ['device', ['device', 'hour']]})
  eval_config = build_eval_config(config)
  assert list(eval_config.slicing_specs) == [
      tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=['device']),
      tfma.SlicingSpec(feature_keys=['device', 'hour'])]
  for spec in eval_config.metrics_specs:
    for metric in spec.metrics:
      assert not metric.HasField('threshold'), metric
      for per_slice in metric.per_slice_thresholds:
        assert list(per_slice.slicing_specs) == [tfma.SlicingSpec()]


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
