"""Config: the sample loads; each kind of mistake names the key and what is allowed."""

import copy

import pytest
import yaml

from conftest import SAMPLE_CONFIG
from pipeline.config import ConfigError, PipelineConfig, load_config, parse_config


@pytest.fixture()
def raw():
  with open(SAMPLE_CONFIG) as f:
    return yaml.safe_load(f)


def test_sample_config_loads_and_round_trips(raw):
  config = load_config(SAMPLE_CONFIG)
  assert [t.name for t in config.tasks] == ['click', 'conversion', 'dwell']
  assert config.task('dwell').type == 'regression'
  assert config.task('click').thresholds['auc'].min == 0.6
  assert {f.name for f in config.categorical_features} >= {'user_segment', 'item_id', 'device'}
  assert config.data.input_base.startswith('/')  # relative paths resolved
  assert PipelineConfig.from_json(config.to_json()) == config
  assert config.with_overrides(training={'train_steps': 7}).training.train_steps == 7


def _error(raw) -> str:
  with pytest.raises(ConfigError) as e:
    parse_config(raw)
  return str(e.value)


# Each kind of mistake and the error it gets (tests/test_config_schema.py holds the JSON Schema
# to the same cases).
MISTAKES = [
    (lambda r: r['tasks'][1].update(type='binry'),
     "tasks[1].type: 'binry' is not one of binary, regression"),
    (lambda r: r['features'][0].update(type='text'),
     "features[0].type: 'text' is not one of categorical, numeric"),
    (lambda r: r['features'][6].update(scaling='minmax'),
     "features[6].scaling: 'minmax' is not one of z_score, log, none"),
    (lambda r: r['model'].update(type='transformer'),
     "model.type: 'transformer' is not one of shared_bottom"),
    (lambda r: r['training'].update(batch_size=0), 'training.batch_size: 0 must be >= 1'),
    (lambda r: r['training'].update(train_steps='many'),
     "training.train_steps: expected an integer, got 'many'"),
    (lambda r: r['training'].update(learning_rate=0.1),
     'training.learning_rate: unknown key; allowed keys are'),
    (lambda r: r['data'].update(eval_fraction=0), 'data.eval_fraction: 0.0 must be >= 0.01'),
    (lambda r: r['data'].update(eval_fraction=0.125),
     'data.eval_fraction: 0.125 is not a whole percentage: the split hashes data.split_key '
     'into 100 buckets'),
    (lambda r: r['training']['trunk_optimizer'].update(learning_rate=-0.1),
     'training.trunk_optimizer.learning_rate: -0.1 must be >= 0.0'),
    (lambda r: r['data'].update(split_key='click'),
     "data.split_key: 'click' is a task label"),
    (lambda r: r['data'].update(split_key='item_price'),
     "data.split_key: 'item_price' is a numeric feature, which the split cannot hash"),
    (lambda r: r['data'].pop('input_base'), 'data.input_base: required key is missing'),
    (lambda r: r['tasks'][0].pop('label'), 'tasks[0].label: required key is missing'),
    (lambda r: r['tasks'][0]['thresholds'].update(rmse={'max': 1}),
     "tasks[0].thresholds.rmse (metric): 'rmse' is not one of auc, binary_crossentropy"),
    (lambda r: r['tasks'][0]['thresholds'].update(auc={'min': 0.9, 'max': 0.1}),
     'tasks[0].thresholds.auc: min 0.9 is above max 0.1'),
    (lambda r: r['tasks'][2].update(label='click'),
     "tasks[2].label: column 'click' is already used by tasks[0]"),
    (lambda r: r['tasks'][1].update(name='click'), "tasks[1].name: task 'click' is listed twice"),
    (lambda r: r['features'][0].update(scaling='log'),
     'features[0].scaling: only applies to numeric features, this one is categorical'),
    (lambda r: r.update(features=[]), 'features: expected a non-empty list of features'),
    (lambda r: r['features'][0].update(buckets=8),
     'features[0].buckets: only applies to numeric features, this one is categorical'),
    (lambda r: r['features'][6].update(buckets=1), 'features[6].buckets: 1 must be >= 2'),
    (lambda r: r['features'][6].update(embedding_dim=4),
     'features[6].embedding_dim: applies to categorical features and to numeric ones with '
     'buckets'),
    (lambda r: r['features'][0].update(name='price__bucket'),
     "features[0].name: 'price__bucket' ends with '__bucket'"),
    (lambda r: r['training'].update(early_stopping={'monitor': 'ctr'}),
     "training.early_stopping.monitor: 'ctr' is neither loss (the total) nor a task"),
    (lambda r: r['model'].update(num_shared_experts=0),
     'model.num_shared_experts: 0 must be >= 1'),
    (lambda r: r['tasks'][0].update(head_units=[]),
     'tasks[0].head_units: expected a non-empty list of layer sizes'),
    (lambda r: r['tasks'][0].update(max_regression={'root_mean_squared_error': 1}),
     'tasks[0].max_regression.root_mean_squared_error: not a metric of a binary task (auc, '
     'binary_crossentropy)'),
    (lambda r: r['tasks'][0].update(max_regression={'calibration': 0.1}),
     "tasks[0].max_regression.calibration (metric): 'calibration' is not one of auc"),
    (lambda r: r['tasks'][2].update(max_regression={'root_mean_squared_error': 'two%'}),
     "tasks[2].max_regression.root_mean_squared_error: 'two%' is not a percentage"),
    (lambda r: r['tasks'][0].update(max_regression={'auc': -0.1}),
     'tasks[0].max_regression.auc: -0.1 must be >= 0.0'),
    (lambda r: r['serving'].update(keep_versions=0), 'serving.keep_versions: 0 must be >= 1'),
    (lambda r: r['serving'].update(canary='yes'), "serving.canary: expected true or false"),
    (lambda r: r.update(evaluation={'slices': ['country']}),
     "evaluation.slices[0]: 'country' is not a feature; slices are by categorical features "
     "(user_segment, item_id"),
    (lambda r: r.update(evaluation={'slices': ['device', ['hour', 'item_price']]}),
     "evaluation.slices[1][1]: 'item_price' is a numeric feature"),
    (lambda r: r.update(evaluation={'slices': [['device', 'hour', 'item_id']]}),
     'evaluation.slices[0]: expected a list of one or two feature names'),
    (lambda r: r.update(evaluation={'slices': [['device', 'device']]}),
     "evaluation.slices[0]: ['device', 'device'] lists 'device' twice"),
    (lambda r: r.update(evaluation={'slices': [['device', 'hour'], ['hour', 'device']]}),
     "evaluation.slices[1]: ['hour', 'device'] is listed twice"),
    (lambda r: r.update(evaluation={'slices': 'device'}),
     'evaluation.slices: expected a list of feature names'),
    (lambda r: r.update(evaluation={'slice_gate_min_examples': 0}),
     'evaluation.slice_gate_min_examples: 0 must be >= 1'),
    (lambda r: r.update(evaluation={'slice_by': ['device']}),
     'evaluation.slice_by: unknown key; allowed keys are slices, slice_gate_min_examples'),
    (lambda r: r['serving'].update(score={'weights': {'click': 1}}),
     'serving.score.label: required key is missing'),
    (lambda r: r['serving'].update(score={'weights': {}, 'label': 'click'}),
     'serving.score.weights: expected a non-empty mapping'),
    (lambda r: r['serving'].update(score={'weights': {'click': 'high'}, 'label': 'click'}),
     "serving.score.weights.click: expected a number, got 'high'"),
    (lambda r: r['serving'].update(score={'weights': {'ctr': 1}, 'label': 'click'}),
     'serving.score.weights.ctr: is not one of the tasks (click, conversion, dwell) or numeric '
     'features (position, item_price)'),
    (lambda r: r['serving'].update(score={'weights': {'device': 1}, 'label': 'click'}),
     'serving.score.weights.device: is not one of the tasks'),
    (lambda r: r['serving'].update(score={'weights': {'click': 1}, 'label': 'dwell'}),
     "serving.score.label: 'dwell' is not one of the binary tasks (click, conversion)"),
    (lambda r: r['serving'].update(score={'weights': {'click': 1}, 'label': 'click',
                                          'combine': 'max'}),
     "serving.score.combine: 'max' is not one of weighted_sum, weighted_product"),
    (lambda r: r['serving'].update(score={'weights': {'click': 1}, 'label': 'click',
                                          'name': 'conversion'}),
     "serving.score.name: 'conversion' is already a model output"),
    (lambda r: r['serving'].update(score={'weights': {'click': 1}, 'label': 'click',
                                          'group_by': 'item_price'}),
     "serving.score.group_by: 'item_price' is not a feature of the examples to group by"),
    (lambda r: r['serving'].update(score={'weights': {'click': 1}, 'label': 'click',
                                          'max_regression': {'ndcg': 0.01}}),
     'serving.score.max_regression.ndcg: NDCG needs serving.score.group_by'),
    (lambda r: r['serving'].update(score={'weights': {'click': 1}, 'label': 'click',
                                          'thresholds': {'rmse': {'max': 1}}}),
     "serving.score.thresholds.rmse (metric): 'rmse' is not one of auc, mean_prediction"),
    # Task spaces and row weights (tasks[1] is conversion, defined where click == 1).
    (lambda r: r['tasks'][1].update(space={}),
     'tasks[1].space: give where, or label_present: true'),
    (lambda r: r['tasks'][1].update(space={'where': {'click': 1}, 'when': 'clicked'}),
     'tasks[1].space.when: unknown key; allowed keys are where, label_present'),
    (lambda r: r['tasks'][1].update(space={'where': {'click': 2}}),
     "tasks[1].space.where.click: 2 is not a value of binary label 'click' (0 or 1)"),
    (lambda r: r['tasks'][1].update(space={'where': {'click': [1]}}),
     'tasks[1].space.where.click: expected'),
    (lambda r: r['tasks'][1].update(space={'where': {'position': 1}}),
     "tasks[1].space.where.position: 'position' is neither a binary task label nor a "
     'categorical feature'),
    (lambda r: r['tasks'][1].update(space={'where': {'dwell_seconds': 1}}),
     "tasks[1].space.where.dwell_seconds: 'dwell_seconds' is neither a binary task label"),
    (lambda r: r['tasks'][1].update(space={'where': {'conversion': 1}}),
     "tasks[1].space.where.conversion: is the task's own label (use label_present)"),
    (lambda r: r['tasks'][1].update(space={'label_present': 'yes'}),
     "tasks[1].space.label_present: expected true or false, got 'yes'"),
    (lambda r: r['tasks'][1].update(weight='click'),
     "tasks[1].weight: 'click' is a label, a categorical feature or the split key"),
    (lambda r: r['tasks'][1].update(weight=3),
     'tasks[1].weight: 3 must be a non-empty name'),
    (lambda r: r['features'].append({'name': 'conversion__weight', 'type': 'numeric'}),
     "tasks[1]: the weight column 'conversion__weight' that ingestion writes for its space is "
     'already a field of the log'),
    (lambda r: (r['model'].update(type='esmm', esmm_click_task='click',
                                  esmm_conversion_task='conversion'),
                r['tasks'][0].update(space={'where': {'device': 'ios'}})),
     'tasks[0].space: the esmm click task is trained and evaluated on every impression'),
]


@pytest.mark.parametrize('mutate, expected', MISTAKES)
def test_mistakes_name_the_key(raw, mutate, expected):
  raw = copy.deepcopy(raw)
  mutate(raw)
  assert expected in _error(raw)


def test_regression_tolerances_default_by_task_type(raw):
  from pipeline.config import regression_tolerances  # pylint: disable=g-import-not-at-top
  config = parse_config(raw)
  assert regression_tolerances(config.task('click')) == {'auc': 0.01}
  assert regression_tolerances(config.task('dwell')) == {'root_mean_squared_error': '2%'}
  raw = copy.deepcopy(raw)
  raw['tasks'][2]['max_regression'] = {'mean_absolute_error': 0.5}
  assert regression_tolerances(parse_config(raw).task('dwell')) == {'mean_absolute_error': 0.5}


def test_load_config_names_the_file(tmp_path):
  with pytest.raises(ConfigError, match='does not exist'):
    load_config(str(tmp_path / 'missing.yaml'))
  bad = tmp_path / 'bad.yaml'
  bad.write_text('name: x\ndata: [1, 2\n')
  with pytest.raises(ConfigError, match=f'{bad}: not valid YAML'):
    load_config(str(bad))


def test_a_key_written_twice_is_refused_naming_it(tmp_path):
  """YAML keeps the last of two equal keys silently; a config must not."""
  with open(SAMPLE_CONFIG) as f:
    lines = f.read().splitlines()
  at = next(i for i, line in enumerate(lines) if line.strip().startswith('train_steps:'))
  lines.insert(at + 1, lines[at].replace('400', '40'))
  twice = tmp_path / 'twice.yaml'
  twice.write_text('\n'.join(lines) + '\n')
  with pytest.raises(ConfigError, match=f"{twice}: duplicate key 'train_steps' on lines "
                                        f"{at + 1} and {at + 2}: only the last would be kept"):
    load_config(str(twice))
  anchors = tmp_path / 'anchors.yaml'  # a merge that overrides a key is not a duplicate
  anchors.write_text('\n'.join(lines[:at + 1] + lines[at + 2:]) + '\n'
                     'extra: {<<: {a: 1}, a: 2}\n')
  with pytest.raises(ConfigError, match='extra: unknown key'):
    load_config(str(anchors))


def test_every_config_key_is_documented():
  """docs/configuration.md names every key of every section."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from pipeline import config as config_module  # pylint: disable=g-import-not-at-top
  with open(os.path.join(os.path.dirname(SAMPLE_CONFIG), '..', 'docs', 'configuration.md')) as f:
    doc = f.read()
  sections = [config_module.PipelineConfig, config_module.DataConfig,
              config_module.FeatureConfig, config_module.TaskConfig,
              config_module.TaskSpaceConfig, config_module.ModelConfig, config_module.TrainingConfig,
              config_module.OptimizerConfig, config_module.EarlyStoppingConfig,
              config_module.ServingConfig, config_module.ScoreConfig,
              config_module.EvaluationConfig,
              config_module.BeamConfig, config_module.KubeflowConfig]
  missing = [f'{cls.__name__}.{field.name}' for cls in sections
             for field in dataclasses.fields(cls) if f'`{field.name}`' not in doc]
  assert not missing, missing
