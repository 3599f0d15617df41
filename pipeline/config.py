"""The pipeline's config: one YAML file lists the features, the tasks and how to train and serve.

The file is parsed and validated once, here. Every error names the key that is wrong and, where
the key takes one of a fixed set of values, the values allowed. Each field's description and
rule (pipeline/config_rules.py) serve both the validator and the JSON Schema (`json_schema`). Components receive the parsed
config as JSON (`PipelineConfig.to_json`) and rebuild it with `PipelineConfig.from_json`;
nothing else re-derives the feature or task list.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml
from tensorflow_metadata.proto.v0 import anomalies_pb2

from pipeline.config_rules import (AnyOf, ConfigError, Const, Either, Flag, Is, IsSet, ListOf,
                                   MapOf, Name, Number, Off, OneOf, Optional_, Percentage, Section,
                                   Steps, Text, Toggle, field, require_mapping)


FEATURE_TYPES = ('categorical', 'numeric')
NUMERIC_SCALINGS = ('z_score', 'log', 'none')
TASK_TYPES = ('binary', 'regression')
MODEL_TYPES = ('shared_bottom', 'mmoe', 'esmm', 'ple')
BEAM_RUNNERS = ('direct', 'dataflow', 'flink', 'spark')
DIRECT_RUNNING_MODES = ('in_memory', 'multi_threading', 'multi_processing')
ENVIRONMENT_TYPES = ('DOCKER', 'EXTERNAL', 'PROCESS', 'LOOPBACK')
LOSS_WEIGHTINGS = ('uncertainty', 'fixed', 'equal', 'dwa', 'gradnorm')
GRADIENT_SURGERIES = ('none', 'pcgrad')
AUTO = 'auto'  # features[].embedding_dim: a width from the embedding's row count
OPTIMIZERS = ('adam', 'sgd', 'adagrad')
LR_SCHEDULES = ('constant', 'cosine', 'exponential')
# Metric names are TFMA's; these are the ones each task type computes and may be thresholded on.
TASK_METRICS = {
    'binary': ('auc', 'binary_crossentropy', 'calibration', 'mean_prediction', 'mean_label'),
    'regression': ('root_mean_squared_error', 'mean_absolute_error', 'mean_prediction',
                   'mean_label'),
}
# TFDV anomaly kinds that data.accept_anomalies may list.
ANOMALY_KINDS = tuple(name for name in anomalies_pb2.AnomalyInfo.Type.keys()
                      if name != 'UNKNOWN_TYPE')
# Metrics a new model may be compared on against the served one, and which way is better.
METRIC_DIRECTIONS = {
    'auc': 'higher',
    'binary_crossentropy': 'lower',
    'root_mean_squared_error': 'lower',
    'mean_absolute_error': 'lower',
    'ndcg': 'higher',
}
DEFAULT_MAX_REGRESSION = {
    'binary': {'auc': 0.01},
    'regression': {'root_mean_squared_error': '2%'},
}


# The train/eval split hashes the split key into this many buckets (components/log_example_gen.py).
SPLIT_BUCKETS = 100
# A numeric feature's quantile bucket is fed to the network as `<feature>__bucket`.
BUCKET_SUFFIX = '__bucket'
PIECE_SUFFIX = '__piece'  # <feature>__piece<t>: bin t of a numeric feature's piecewise_linear
# A task with a space or a row weight: ingestion writes `<task>__weight`, its example weight
# (the row weight inside the space, 0 outside), which the loss and TFMA read.
WEIGHT_SUFFIX = '__weight'
# A file pattern with spans: a {SPAN} (or {SPAN:width}) spec, or all of {YYYY} {MM} {DD} (the
# specs TFX's ExampleGen driver resolves); regular expressions valid in Python and JSON Schema.
_SPAN_SPEC = r'\{SPAN(:[^}]*)?\}'
_DATE_SPECS = r'^(?=.*\{YYYY\})(?=.*\{MM\})(?=.*\{DD\})'
SPAN_SPECS = f'{_SPAN_SPEC}|{_DATE_SPECS}'


# What a value may be is said once per field (pipeline/config_rules.py): the validator and the
# JSON Schema (`mtlp config-schema`) read the same rule.
_POSITIVE_INT = Number(int, minimum=1)
_FRACTION = Number(minimum=0.0, maximum=1.0)
_BOUND = Optional_(Number(finite=True))
_UNITS = ListOf(_POSITIVE_INT, 'layer sizes', non_empty=True)
_OPTIONAL_TEXT = Optional_(Text())
_KUBERNETES_NAME = Text(pattern=r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$', max_length=63,
                        what='a Kubernetes name (lower-case letters, digits and -, at most 63 '
                        'characters)', message='{value!r} is not {what}')
_NUMERIC_ONLY = dict(applies=Is('type', 'numeric'),
                     applies_message='only applies to numeric features, this one is {type}')
_CATEGORICAL_ONLY = dict(applies=Is('type', 'categorical'),
                         applies_message='only applies to categorical features, this one is '
                         '{type}')
_REGRESSION_ONLY = dict(applies=Is('type', 'regression'),
                        applies_message='only applies to regression tasks (a binary label must '
                        'be 0 or 1)')
_ESMM_ONLY = dict(applies=Is('type', 'esmm'), applies_message='only applies when model.type is '
                  'esmm')


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  """An input feature: a field of every log line."""
  name: str = field(doc='Field name in the log.', rule=Name(not_patterns=(
      (re.escape(BUCKET_SUFFIX) + '$', f"ends with {BUCKET_SUFFIX!r}, which names a numeric "
       "feature's bucket"),
      (re.escape(PIECE_SUFFIX) + r'[0-9]+$', f"ends with {PIECE_SUFFIX!r} and a number, which "
       "names a bin of a numeric feature's piecewise_linear"))))
  type: str = field(doc='categorical or numeric.', rule=OneOf(FEATURE_TYPES))
  top_k: Optional[int] = field(
      None, doc='categorical: keep the most frequent k values in the vocabulary (null: all).',
      rule=Optional_(_POSITIVE_INT), **_CATEGORICAL_ONLY)
  frequency_threshold: int = field(
      0, doc='categorical: values seen fewer times go to the OOV buckets.',
      rule=Number(int, minimum=0), **_CATEGORICAL_ONLY)
  oov_buckets: int = field(1, doc='categorical: hash buckets for out-of-vocabulary values.',
                           rule=_POSITIVE_INT, **_CATEGORICAL_ONLY)
  embedding_dim: Union[int, str] = field(
      8, doc="The embedding width: a number, or 'auto' for min(64, round(1.6 * rows ** 0.56)) "
      "from the embedding's row count (vocabulary plus OOV buckets, or buckets), after "
      "fast.ai's rule. Categorical features, and numeric ones with buckets, periodic or "
      'piecewise_linear.',
      rule=Either((Const(AUTO), Number(int, minimum=1, also_allowed=f"'{AUTO}'"))),
      applies=AnyOf((Is('type', 'categorical'), IsSet('buckets'), IsSet('periodic'),
                     IsSet('piecewise_linear'))),
      applies_message='applies to categorical features and to numeric ones with buckets, '
      'periodic or piecewise_linear')
  scaling: str = field(
      'z_score', doc='numeric: z_score, log (z-score of log1p(max(x, 0))) or none; a value '
      'outside the range of the train split is first clamped to it.',
      rule=OneOf(NUMERIC_SCALINGS), **_NUMERIC_ONLY)
  buckets: int = field(
      0, doc="numeric: also a learned embedding (embedding_dim) of the value's quantile bucket "
      'among this many (2 to 10000; quantiles of the train split); 0 or null: the scaled value '
      'alone.', rule=Off(Number(int, minimum=2, maximum=10000)),
      **_NUMERIC_ONLY)
  periodic: int = field(
      0, doc='numeric: also a periodic embedding of the scaled value (PLR, Gorishniy et al. '
      '2022): ReLU(Dense(embedding_dim)([sin(2 pi c x), cos(2 pi c x)])) with this many '
      'trainable frequencies c (1 to 1024); 0 or null: none.',
      rule=Off(Number(int, minimum=1, maximum=1024)),
      **_NUMERIC_ONLY)
  periodic_scale: float = field(
      0.1, doc="numeric: the periodic frequencies' initial standard deviation.",
      rule=Number(minimum=0.0, exclusive_min=True), **_NUMERIC_ONLY)
  piecewise_linear: int = field(
      0, doc='numeric: also a piecewise-linear encoding of the value over this many quantile '
      'bins (PLE, Gorishniy et al. 2022; 2 to 256), then ReLU(Dense(embedding_dim)); 0 or '
      'null: none.', rule=Off(Number(int, minimum=2, maximum=256)),
      **_NUMERIC_ONLY)
  min: Optional[float] = field(
      None, doc='numeric: ingestion quarantines a value below it (out_of_range:<name>).',
      rule=_BOUND, **_NUMERIC_ONLY)
  max: Optional[float] = field(
      None, doc='numeric: ingestion quarantines a value above it (out_of_range:<name>).',
      rule=_BOUND, **_NUMERIC_ONLY)
  max_drift: Optional[float] = field(
      None, doc="Against the previous span's statistics: the largest L-infinity distance "
      '(categorical) or Jensen-Shannon divergence (numeric) before the run stops ahead of '
      'Transform; in (0, 1].',
      rule=Optional_(Number(minimum=0.0, maximum=1.0, exclusive_min=True)))
  max_skew: Optional[float] = field(
      None, doc='The same distance between the train and the eval split of the run.',
      rule=Optional_(Number(minimum=0.0, maximum=1.0, exclusive_min=True)))

  def check(self, path: str) -> None:
    if self.min is not None and self.max is not None and self.min > self.max:
      raise ConfigError(f'{path}.min: {self.min} is above max {self.max}')


@dataclasses.dataclass(frozen=True)
class Threshold:
  """Bounds a metric must meet for the model to be blessed (both included)."""
  min: Optional[float] = field(None, doc='The lowest value allowed.', rule=_BOUND)
  max: Optional[float] = field(None, doc='The highest value allowed.', rule=_BOUND)

  def check(self, path: str) -> None:
    if self.min is not None and self.max is not None and self.min > self.max:
      raise ConfigError(f'{path}: min {self.min} is above max {self.max}')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer of one parameter group (the trunk, a task's head, or the loss weights)."""
  type: str = field('adam', doc='adam, sgd or adagrad.', rule=OneOf(OPTIMIZERS))
  learning_rate: float = field(
      0.003, doc='The initial learning rate; 0 freezes the group while the others train.',
      rule=Number(minimum=0.0))
  schedule: str = field('constant', doc='constant, cosine (to 0 over training.train_steps) or '
                        'exponential.', rule=OneOf(LR_SCHEDULES))
  decay_rate: float = field(0.1, doc="exponential: the learning rate's factor at the last step.",
                            rule=Number(minimum=0.0, maximum=1.0, exclusive_min=True))
  weight_decay: float = field(
      0.0, doc='Decoupled weight decay (Loshchilov & Hutter; AdamW for adam): each step every '
      'kernel and embedding table of the group shrinks by learning_rate * weight_decay; biases '
      'are not decayed.', rule=_FRACTION)


# A metric's bounds, and how much worse than the served model's it may get: for tasks and score.
_THRESHOLD = Section(Threshold, at_least_one=True)
_TOLERANCE = Either((Number(minimum=0.0), Percentage()))
_TASK_METRIC_NAMES = tuple(dict.fromkeys(m for ms in TASK_METRICS.values() for m in ms))


@dataclasses.dataclass(frozen=True)
class TaskSpaceConfig:
  """Where a task is defined: its loss and its metrics read only the rows of its space."""
  where: Mapping[str, Union[int, str]] = field(
      {}, doc='{field: value}: the task is defined where every field named has this value: '
      "another binary task's label (0 or 1) or a categorical feature (a string or an integer). "
      'Outside, its label may be absent. Empty: every row.',
      rule=MapOf(Name(), Either((Number(int), Text()))))
  label_present: bool = field(
      False, doc='Rows whose label is absent or null are outside the space (not quarantined).',
      rule=Flag())

  def check(self, path: str) -> None:
    if not self.where and not self.label_present:
      raise ConfigError(f'{path}: give where, or label_present: true (an empty space is every '
                        'row: leave space out)')

  @staticmethod
  def schema_conditions() -> List[Dict[str, Any]]:
    """check()'s rule, for the JSON Schema."""
    return [{'anyOf': [
        {'required': ['where'], 'properties': {'where': {'type': 'object', 'minProperties': 1}}},
        {'required': ['label_present'], 'properties': {'label_present': {'const': True}}}]}]


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """A task: one label, one head of the model, one served output."""
  name: str = field(doc='Task name; names the model output and the served output.', rule=Name())
  label: str = field(doc='Label field in the log (not a feature, not another task\'s label).',
                     rule=Name())
  type: str = field(doc='binary (0/1, sigmoid head, log loss) or regression (linear head, '
                    'squared error).', rule=OneOf(TASK_TYPES))
  head_units: Sequence[int] = field((32,), doc="Hidden layer sizes of the task's head.",
                                    rule=_UNITS)
  optimizer: OptimizerConfig = field(OptimizerConfig(), doc="The head's own optimizer.",
                                     rule=Section(OptimizerConfig, OptimizerConfig()))
  thresholds: Mapping[str, Threshold] = field(
      {}, doc='{metric: {min, max}}: the model is blessed only if every one passes (TFMA '
      'metric names; which ones depend on the task type).',
      rule=MapOf(OneOf(_TASK_METRIC_NAMES, ' (metric)'), _THRESHOLD))
  inputs_from: Sequence[str] = field(
      (), doc="Other tasks whose estimates this task's head takes as inputs, under "
      'stop_gradient; no cycles.', rule=Optional_(ListOf(Name(), 'task names')))
  loss_weight: float = field(1.0, doc="The task's weight when training.loss_weighting is fixed.",
                             rule=Number(minimum=0.0))
  max_regression: Mapping[str, Union[float, str]] = field(
      {}, doc='Against the served model: how much worse each metric may get, in its own units '
      "(a number) or relative to the served value (a string such as '2%'). Empty: binary "
      "{auc: 0.01}, regression {root_mean_squared_error: '2%'}.",
      rule=MapOf(OneOf(tuple(METRIC_DIRECTIONS), ' (metric)'), _TOLERANCE))
  label_min: Optional[float] = field(
      None, doc='regression: ingestion quarantines a label below it (out_of_range:<label>).',
      rule=_BOUND, **_REGRESSION_ONLY)
  label_max: Optional[float] = field(
      None, doc='regression: ingestion quarantines a label above it (out_of_range:<label>).',
      rule=_BOUND, **_REGRESSION_ONLY)
  space: Optional[TaskSpaceConfig] = field(
      None, doc='Where the task is defined (its loss and metrics read those rows only); null: '
      'every row.', rule=Optional_(Section(TaskSpaceConfig)))
  weight: Optional[str] = field(
      None, doc="A numeric log field (>= 0, finite) weighting each row in the task's loss and "
      'metrics; null: every row weighs 1.', rule=Optional_(Name()))

  def __post_init__(self) -> None:
    if self.inputs_from is None:
      object.__setattr__(self, 'inputs_from', ())

  def check(self, path: str) -> None:
    """The metrics named must be the task type's."""
    for metric in self.thresholds:
      OneOf(TASK_METRICS[self.type], ' (metric)').parse(metric, f'{path}.thresholds.{metric}')
    for metric in self.max_regression:
      if metric not in TASK_METRICS[self.type]:
        allowed = ', '.join(m for m in TASK_METRICS[self.type] if m in METRIC_DIRECTIONS)
        raise ConfigError(f'{path}.max_regression.{metric}: not a metric of a {self.type} task '
                          f'({allowed})')
    if self.label_min is not None and self.label_max is not None and (
        self.label_min > self.label_max):
      raise ConfigError(f'{path}.label_min: {self.label_min} is above label_max '
                        f'{self.label_max}')

  @property
  def weight_column(self) -> Optional[str]:
    """The example column holding the task's example weight, when it has a space or a row
    weight (`WEIGHT_SUFFIX`); None: every row weighs 1."""
    return f'{self.name}{WEIGHT_SUFFIX}' if self.space or self.weight else None

  @property
  def space_text(self) -> Optional[str]:
    """Where the task is defined, as text ('click == 1 and conversion present, weighted by
    w'); None for every row."""
    parts = []
    if self.space is not None:
      parts += [f'{name} == {value!r}' for name, value in self.space.where.items()]
      if self.space.label_present:
        parts.append(f'{self.label} present')
    text = ' and '.join(parts) or None
    if self.weight:
      text = f'{text or "every row"}, weighted by {self.weight}'
    return text

  @staticmethod
  def schema_conditions() -> List[Dict[str, Any]]:
    """check()'s rule on metric names, for the JSON Schema."""
    return [{'if': {'properties': {'type': {'const': ttype}}, 'required': ['type']},
             'then': {'properties': {
                 'thresholds': {'propertyNames': {'enum': list(metrics)}},
                 'max_regression': {'propertyNames': {
                     'enum': [m for m in metrics if m in METRIC_DIRECTIONS]}}}}}
            for ttype, metrics in TASK_METRICS.items()]


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the logs are and how they are split."""
  input_base: str = field(doc='Directory holding the logs (on Kubeflow: gs:// or a volume '
                          'mounted in every step).', rule=Text())
  file_pattern: str = field('*/*.jsonl*', doc='Glob under input_base; .gz files are '
                            'decompressed; {SPAN} or {YYYY}-{MM}-{DD} select spans.', rule=Text())
  split_key: str = field('user_id', doc='The field whose hash splits train from eval (an id, '
                         'never a numeric feature or a label).', rule=Text())
  eval_fraction: float = field(
      0.2, doc="Share of the split key's 100 hash buckets in eval: 0.01 to 0.9 in steps of "
      '0.01.', rule=Steps(0.01, 0.9, 1 / SPLIT_BUCKETS,
                          f'is not a whole percentage: the split hashes data.split_key into '
                          f'{SPLIT_BUCKETS} buckets (use 0.01 to 0.9 in steps of 0.01)'))
  max_rejected_fraction: float = field(
      0.01, doc='Stop before training if a larger share of the records read is quarantined.',
      rule=_FRACTION)
  schema: Optional[str] = field(None, doc='Curated schema (.pbtxt); SchemaGen infers one when '
                                'absent.', rule=_OPTIONAL_TEXT)
  window_spans: int = field(1, doc='With {SPAN} or {YYYY}-{MM}-{DD} in file_pattern: how many '
                            'recent spans to read.', rule=_POSITIVE_INT)
  max_string_bytes: int = field(
      1024, doc='Categorical values (and the split key) longer than this in UTF-8 bytes are '
      'quarantined (string_too_long:<name>).', rule=_POSITIVE_INT)
  accept_anomalies: Sequence[str] = field(
      (), doc='Anomaly kinds (TFDV names, e.g. COMPARATOR_L_INFTY_HIGH) reported but not '
      'stopping the run.', rule=ListOf(OneOf(ANOMALY_KINDS), 'anomaly kinds'))

  def check(self, path: str) -> None:
    if self.window_spans > 1 and not re.search(SPAN_SPECS, self.file_pattern):
      raise ConfigError(f'{path}.window_spans: {self.window_spans} spans need {{SPAN}} or '
                        f'{{YYYY}}-{{MM}}-{{DD}} in {path}.file_pattern ({self.file_pattern!r})')

  @staticmethod
  def schema_conditions() -> List[Dict[str, Any]]:
    return [{'if': {'properties': {'window_spans': {'minimum': 2}}, 'required': ['window_spans']},
             'then': {'properties': {'file_pattern': {'pattern': SPAN_SPECS}},
                      'required': ['file_pattern']}}]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The architecture."""
  type: str = field('shared_bottom', doc='shared_bottom, mmoe, esmm or ple.',
                    rule=OneOf(MODEL_TYPES))
  trunk_units: Sequence[int] = field((128, 64), doc='shared_bottom, esmm: shared dense layers.',
                                     rule=_UNITS)
  dropout: float = field(0.0, doc='shared_bottom, esmm: dropout after each trunk layer.',
                         rule=Number(minimum=0.0, maximum=0.9))
  embedding_dropout: float = field(0.0, doc="Every architecture: dropout on each embedding's "
                                   'output.', rule=Number(minimum=0.0, maximum=0.9))
  head_dropout: float = field(0.0, doc="Every architecture: dropout after each task-head layer.",
                              rule=Number(minimum=0.0, maximum=0.9))
  cross_layers: int = field(0, doc='Every architecture: DCN-V2 cross layers on the input '
                            '(0 to 8).', rule=Number(int, minimum=0, maximum=8))
  num_experts: int = field(4, doc='mmoe: experts.', rule=_POSITIVE_INT)
  expert_units: Sequence[int] = field((64,), doc="mmoe: each expert's dense layers; ple: one "
                                      'level per entry.', rule=_UNITS)
  num_shared_experts: int = field(2, doc='ple: shared experts per level.', rule=_POSITIVE_INT)
  num_task_experts: int = field(1, doc="ple: each task's own experts per level.",
                                rule=_POSITIVE_INT)
  esmm_click_task: Optional[str] = field(
      None, doc='esmm (required): the binary task playing the click (CTR) role.',
      rule=_OPTIONAL_TEXT, **_ESMM_ONLY)
  esmm_conversion_task: Optional[str] = field(
      None, doc='esmm (required): the binary conversion task, trained as CTCVR.',
      rule=_OPTIONAL_TEXT, **_ESMM_ONLY)

  def check(self, path: str) -> None:
    if self.type == 'esmm':
      for key in ('esmm_click_task', 'esmm_conversion_task'):
        if getattr(self, key) is None:
          raise ConfigError(f'{path}.{key}: required when model.type is esmm')

  @staticmethod
  def schema_conditions() -> List[Dict[str, Any]]:
    keys = ('esmm_click_task', 'esmm_conversion_task')
    return [{'if': {'properties': {'type': {'const': 'esmm'}}, 'required': ['type']},
             'then': {'required': list(keys),
                      'properties': {k: {'not': {'type': 'null'}} for k in keys}}}]


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig:
  """Watch a validation loss each epoch; stop after `patience` epochs without an improvement
  of more than `min_delta`; export the best epoch's weights."""
  monitor: str = field('loss', doc="'loss' (the total) or a task name (that task's loss).",
                       rule=Name())
  patience: int = field(2, doc='Epochs without improvement before stopping.',
                        rule=_POSITIVE_INT)
  min_delta: float = field(0.0, doc='Smaller improvements do not count.',
                           rule=Number(minimum=0.0))


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """Steps, batch size, optimizers, loss weighting and workers."""
  train_steps: int = field(1000, doc='Training steps.', rule=_POSITIVE_INT)
  eval_steps: int = field(50, doc='Validation steps in total over training.',
                          rule=_POSITIVE_INT)
  batch_size: int = field(256, doc='Per-replica batch size.', rule=_POSITIVE_INT)
  trunk_optimizer: OptimizerConfig = field(
      OptimizerConfig(), doc='The optimizer of the trunk group (embeddings, shared layers).',
      rule=Section(OptimizerConfig, OptimizerConfig()))
  loss_weights_optimizer: OptimizerConfig = field(
      OptimizerConfig(learning_rate=0.05), doc='The optimizer of the learned loss weights '
      '(no weight_decay).', rule=Section(OptimizerConfig, OptimizerConfig(learning_rate=0.05)))
  loss_weighting: str = field('uncertainty', doc='uncertainty (Kendall et al. 2018), fixed '
                              '(tasks[].loss_weight), equal, dwa or gradnorm.',
                              rule=OneOf(LOSS_WEIGHTINGS))
  min_log_variance: Optional[float] = field(
      None, doc='uncertainty: a floor on each s = log sigma^2, keeping the loss bounded below.',
      rule=_BOUND)
  gradient_surgery: str = field('none', doc="On the shared trunk's per-task gradients: none or "
                                'pcgrad.', rule=OneOf(GRADIENT_SURGERIES))
  dwa_temperature: float = field(2.0, doc='dwa: the temperature T.',
                                 rule=Number(minimum=0.0, exclusive_min=True))
  gradnorm_alpha: float = field(1.5, doc='gradnorm: the asymmetry alpha.',
                                rule=Number(minimum=0.0))
  seed: int = field(42, doc='Seeds TensorFlow and the input shuffle.',
                    rule=Number(int, minimum=0))
  workers: int = field(
      1, doc='Training workers; more than 1: MultiWorkerMirroredStrategy (local processes, or '
      'TrainJob nodes or TFJob pods on Kubeflow).', rule=_POSITIVE_INT)
  worker_start_timeout_seconds: int = field(
      300, doc='How long a worker waits for every other worker to be reachable before failing.',
      rule=_POSITIVE_INT)
  worker_restarts: int = field(
      2, doc='Local workers: restarts of the group, resuming from the last backup, after a '
      'worker is killed or loses a peer (0 to 100).', rule=Number(int, minimum=0, maximum=100))
  early_stopping: Optional[EarlyStoppingConfig] = field(
      None, doc="Watch a validation loss each epoch and export the best epoch's weights; true "
      'for the defaults; null or false: train every step and export the last epoch.',
      rule=Toggle(Section(EarlyStoppingConfig)))

  def check(self, path: str) -> None:
    if self.loss_weights_optimizer.weight_decay:
      raise ConfigError(f'{path}.loss_weights_optimizer.weight_decay: the loss weights '
                        '(log-variances) are not decayed; weight decay applies to the trunk and '
                        'the task heads')

  @staticmethod
  def schema_conditions() -> List[Dict[str, Any]]:
    return [{'properties': {'loss_weights_optimizer': {
        'properties': {'weight_decay': {'const': 0}}}}}]


SCORE_COMBINATIONS = ('weighted_sum', 'weighted_product')
# A ranking score's metrics (TFMA's names): against its label on the whole eval set, and NDCG@k
# within each group (serving.score.group_by).
SCORE_METRICS = ('auc', 'mean_prediction', 'mean_label', 'ndcg')
SCORE_PRODUCT_FLOOR = 1e-7  # weighted_product: each value is floored here before its power


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
  """A served ranking score: one output combining task outputs (and numeric features), part of
  the exported graph; its weights can be changed without retraining (`mtlp rescore`)."""
  weights: Mapping[str, float] = field(
      doc="{name: weight}: a task (its served output) or a numeric feature (the request's raw "
      'value), with its weight (weighted_sum) or power (weighted_product).',
      rule=MapOf(Name(), Number(finite=True), non_empty=True))
  label: str = field(doc='The binary task (or its label column) the score is evaluated '
                     'against (AUC, NDCG gains).', rule=Name())
  name: str = field('score', doc='The output name (not a task name).', rule=Name())
  combine: str = field(
      'weighted_sum', doc='weighted_sum: the sum of weight x value; weighted_product: the '
      f'product of max(value, {SCORE_PRODUCT_FLOOR:g}) ** weight (pCTR^a x pCVR^b x value^c).',
      rule=OneOf(SCORE_COMBINATIONS))
  group_by: Optional[str] = field(
      None, doc='A field grouping the eval examples into ranked lists (a user, a request): NDCG@k '
      'within each group that holds a positive label. A categorical feature or data.split_key; '
      'null: no NDCG.', rule=Optional_(Name()))
  ndcg_k: int = field(10, doc='The k of NDCG@k.', rule=_POSITIVE_INT)
  thresholds: Mapping[str, Threshold] = field(
      {}, doc='{metric: {min, max}} (auc, mean_prediction, mean_label, ndcg): the model is '
      'blessed only if every one passes.',
      rule=MapOf(OneOf(SCORE_METRICS, ' (metric)'), _THRESHOLD))
  max_regression: Mapping[str, Union[float, str]] = field(
      {}, doc="Against the served model's score, as for a task (auc, ndcg); empty: not "
      'compared.', rule=MapOf(OneOf(('auc', 'ndcg'), ' (metric)'), _TOLERANCE))

  def check(self, path: str) -> None:
    for key in ('thresholds', 'max_regression'):
      if 'ndcg' in getattr(self, key) and self.group_by is None:
        raise ConfigError(f'{path}.{key}.ndcg: NDCG needs {path}.group_by')

  @staticmethod
  def schema_conditions() -> List[Dict[str, Any]]:
    return [{'if': {'properties': {key: {'type': 'object', 'required': ['ndcg']}},
                    'required': [key]},
             'then': {'required': ['group_by'],
                      'properties': {'group_by': {'not': {'type': 'null'}}}}}
            for key in ('thresholds', 'max_regression')]


@dataclasses.dataclass(frozen=True)
class ServingConfig:
  """Where blessed models are pushed, and how they are compared and warmed up."""
  model_name: str = field('mtl_model', doc='TF Serving model name.', rule=Name())
  push_dir: str = field('serving', doc='Models go to <push_dir>/<model_name>/<version>/.',
                        rule=Text(what='a non-empty path'))
  compare_with_served: bool = field(True, doc='Bless only if no task is worse than the served '
                                    'model (tasks[].max_regression).', rule=Flag())
  keep_versions: int = field(5, doc='Versions kept in the push directory (older are deleted).',
                             rule=_POSITIVE_INT)
  canary: bool = field(False, doc='Label the newest version canary, the previous stable.',
                       rule=Flag())
  warmup_examples: int = field(16, doc='Eval examples written as TF Serving warmup requests '
                               '(0 to 1000).', rule=Number(int, minimum=0, maximum=1000))
  score: Optional[ScoreConfig] = field(
      None, doc='A ranking score output combining the task outputs; null: none.',
      rule=Optional_(Section(ScoreConfig)))


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
  """How each task is judged beyond its overall metrics."""
  slices: Sequence[Tuple[str, ...]] = field(
      (), doc="Categorical features to slice every task's metrics by: a name, or a list of two "
      'names (a cross).', rule=ListOf(Either((
          ListOf(Name(), 'one or two feature names', non_empty=True, max_items=2,
                 unique=True), Name())),
          'feature names or [feature, feature] crosses'))
  slice_gate_min_examples: Optional[int] = field(
      None, doc='With a served model: a slice with at least this many eval examples must not '
      'regress beyond the task\'s max_regression. null: slices are reported, never gated.',
      rule=Optional_(_POSITIVE_INT))

  def __post_init__(self) -> None:
    object.__setattr__(self, 'slices', tuple(
        (s,) if isinstance(s, str) else tuple(s) for s in self.slices))


@dataclasses.dataclass(frozen=True)
class BeamConfig:
  """How Beam-based components (ExampleGen, StatisticsGen, Transform, Evaluator) execute."""
  runner: str = field('direct', doc='direct, dataflow, flink or spark.', rule=OneOf(BEAM_RUNNERS))
  direct_running_mode: str = field('in_memory', doc='direct: in_memory, multi_threading or '
                                   'multi_processing.', rule=OneOf(DIRECT_RUNNING_MODES))
  direct_num_workers: int = field(1, doc='direct: worker count; 0 means one per core.',
                                  rule=Number(int, minimum=0))
  project: Optional[str] = field(None, doc='dataflow (required): the GCP project.',
                                 rule=_OPTIONAL_TEXT)
  region: Optional[str] = field(None, doc='dataflow (required): the region.',
                                rule=_OPTIONAL_TEXT)
  temp_location: Optional[str] = field(None, doc='dataflow (required): gs://... for temporary '
                                       'files.', rule=_OPTIONAL_TEXT)
  job_endpoint: Optional[str] = field(None, doc='flink, spark (required): the portable job '
                                      'server, host:port.', rule=_OPTIONAL_TEXT)
  environment_type: str = field('DOCKER', doc='flink, spark: DOCKER (the pipeline image), '
                                'EXTERNAL, PROCESS or LOOPBACK.', rule=OneOf(ENVIRONMENT_TYPES))
  environment_config: Optional[str] = field(None, doc='flink, spark: the worker image or '
                                            'external worker pool address.',
                                            rule=_OPTIONAL_TEXT)
  extra_args: Sequence[str] = field(
      (), doc='More --flag=value arguments, appended as given.',
      rule=ListOf(Text(pattern='^--', what='a --flag=value string'), '--flag=value strings'))

  def check(self, path: str) -> None:
    needed = {'dataflow': ('project', 'region', 'temp_location'),
              'flink': ('job_endpoint',), 'spark': ('job_endpoint',)}
    for key in needed.get(self.runner, ()):
      if getattr(self, key) is None:
        raise ConfigError(f'{path}.{key}: required when beam.runner is {self.runner}')

  @staticmethod
  def schema_conditions() -> List[Dict[str, Any]]:
    return [{'if': {'properties': {'runner': {'const': runner}}, 'required': ['runner']},
             'then': {'required': list(keys),
                      'properties': {k: {'not': {'type': 'null'}} for k in keys}}}
            for runner, keys in (('dataflow', ('project', 'region', 'temp_location')),
                                 ('flink', ('job_endpoint',)), ('spark', ('job_endpoint',)))]


KUBEFLOW_TRAINERS = ('pod', 'trainjob', 'tfjob')
# Kubernetes resource quantities ('2', '500m', '8Gi', '1.5').
_QUANTITY = r'^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$'


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
  """The pipeline on Kubeflow Pipelines: image, storage, experiment, and how it trains."""
  image: str = field('mtl-pipeline:latest', doc='The pipeline image (deploy/Dockerfile).',
                     rule=Text())
  pipeline_root: str = field('gs://CHANGE-ME/mtl-pipeline', doc='Artifact root the cluster can '
                             'write: gs://, s3:// or minio://.', rule=Text())
  experiment: str = field('mtl-pipeline', doc='KFP experiment for submit and schedule.',
                          rule=Text())
  state_dir: Optional[str] = field(
      None, doc='Where steps keep what outlives a run and is not an artifact (opened with '
      'tf.io.gfile). Default: <pipeline_root>/state, which needs a gs:// pipeline root.',
      rule=_OPTIONAL_TEXT)
  trainer: str = field('pod', doc="How the Trainer step trains: pod (in its own pod), trainjob "
                       '(a Kubeflow Trainer v2 TrainJob) or tfjob (a Training Operator TFJob).',
                       rule=OneOf(KUBEFLOW_TRAINERS))
  namespace: Optional[str] = field(None, doc="trainjob, tfjob: the job's namespace (default: "
                                   "the step's own).", rule=Optional_(_KUBERNETES_NAME))
  service_account: Optional[str] = field(None, doc="tfjob: the worker pods' service account.",
                                         rule=Optional_(_KUBERNETES_NAME))
  worker_cpu: str = field('2', doc='trainjob, tfjob: CPU request and limit of each worker pod '
                          '(a Kubernetes quantity such as 2 or 500m).',
                          rule=Text(pattern=_QUANTITY, from_number=True,
                                    what='a Kubernetes quantity such as 2 or 500m',
                                    message='{value!r} is not {what}'))
  worker_memory: str = field('8Gi', doc='trainjob, tfjob: memory request and limit of each '
                             'worker pod.', rule=Text(pattern=_QUANTITY, from_number=True,
                                                      what='a Kubernetes quantity such as 8Gi',
                                                      message='{value!r} is not {what}'))
  worker_gpus: int = field(0, doc='trainjob, tfjob: nvidia.com/gpu limit of each worker pod.',
                           rule=Number(int, minimum=0))
  tfjob_backoff_limit: int = field(3, doc='tfjob: pod restarts before the TFJob fails.',
                                   rule=Number(int, minimum=0))
  tfjob_timeout_seconds: int = field(86400, doc="tfjob: activeDeadlineSeconds, and the step's "
                                     'wait.', rule=Number(int, minimum=60))
  training_runtime: str = field('mtl-pipeline-tensorflow', doc='trainjob: the '
                                'ClusterTrainingRuntime (deploy/trainer-runtime.yaml).',
                                rule=_KUBERNETES_NAME)
  trainjob_timeout_seconds: int = field(86400, doc="trainjob: activeDeadlineSeconds, and the "
                                        "step's wait.", rule=Number(int, minimum=60))
  trainjob_start_timeout_seconds: int = field(
      1800, doc='trainjob: how long every node may take to be running before the step fails '
      "with the TrainJob's conditions.", rule=Number(int, minimum=60))


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """One pipeline: the logs, the features, the tasks, and how to train, judge and serve."""
  name: str = field(doc='Pipeline name (letters, digits, - and _); names the pipeline in ML '
                    'Metadata.', rule=Text(pattern=r'^[A-Za-z0-9_-]*[A-Za-z0-9][A-Za-z0-9_-]*$',
                                           what='letters, digits, - and _'))
  data: DataConfig = field(doc='Where the logs are and how to split them.',
                           rule=Section(DataConfig))
  features: Sequence[FeatureConfig] = field(
      doc='The input features.', rule=ListOf(Section(FeatureConfig), 'features',
                                             non_empty=True))
  tasks: Sequence[TaskConfig] = field(
      doc='The tasks, one model head each.', rule=ListOf(Section(TaskConfig), 'tasks',
                                                         non_empty=True))
  model: ModelConfig = field(ModelConfig(), doc='The architecture.',
                             rule=Section(ModelConfig, ModelConfig()))
  training: TrainingConfig = field(TrainingConfig(), doc='How to train.',
                                   rule=Section(TrainingConfig, TrainingConfig()))
  serving: ServingConfig = field(ServingConfig(), doc='Where and how to serve.',
                                 rule=Section(ServingConfig, ServingConfig()))
  evaluation: EvaluationConfig = field(EvaluationConfig(), doc='Slices and slice gates.',
                                       rule=Section(EvaluationConfig, EvaluationConfig()))
  beam: BeamConfig = field(BeamConfig(), doc='How Beam components run.',
                           rule=Section(BeamConfig, BeamConfig()))
  kubeflow: KubeflowConfig = field(KubeflowConfig(), doc='The pipeline on Kubeflow Pipelines.',
                                   rule=Section(KubeflowConfig, KubeflowConfig()))

  @property
  def categorical_features(self) -> List[FeatureConfig]:
    return [f for f in self.features if f.type == 'categorical']

  @property
  def numeric_features(self) -> List[FeatureConfig]:
    return [f for f in self.features if f.type == 'numeric']

  def task(self, name: str) -> TaskConfig:
    for task in self.tasks:
      if task.name == name:
        return task
    raise KeyError(name)

  def data_view(self) -> 'PipelineConfig':
    """Only what ingestion and Transform read: data, features, and each task's label, type,
    label range, space and row weight.

    They receive this view, so changing the model, training or serving sections, or the
    validation settings (drift, skew, accepted anomalies), leaves their ML Metadata cache keys
    unchanged and a rerun reuses their outputs.
    """
    return PipelineConfig(name=self.name,
                          data=dataclasses.replace(self.data, accept_anomalies=()),
                          features=tuple(dataclasses.replace(
                              f, max_drift=None, max_skew=None,
                              embedding_dim=FeatureConfig.embedding_dim,
                              periodic=FeatureConfig.periodic,
                              periodic_scale=FeatureConfig.periodic_scale)
                              for f in self.features),
                          tasks=tuple(TaskConfig(name=t.name, label=t.label, type=t.type,
                                                 label_min=t.label_min, label_max=t.label_max,
                                                 space=t.space, weight=t.weight)
                                      for t in self.tasks))

  def ingestion_view(self) -> 'PipelineConfig':
    """What ingestion reads: `data_view` without how Transform encodes the features
    (vocabulary limits, scaling, buckets), so changing those re-runs Transform, not
    LogExampleGen."""
    view = self.data_view()
    return dataclasses.replace(view, features=tuple(
        FeatureConfig(name=f.name, type=f.type, min=f.min, max=f.max) for f in view.features))

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'PipelineConfig':
    return parse_config(json.loads(text))

  def with_overrides(self, **sections: Mapping[str, Any]) -> 'PipelineConfig':
    """Returns a validated copy with some keys of some sections replaced.

    Example: `config.with_overrides(data={'input_base': 'other/logs'})`.
    """
    raw = self.to_dict()
    for section, values in sections.items():
      if section not in raw or not isinstance(raw[section], dict):
        raise ConfigError(f'{section}: not a config section that can be overridden')
      raw[section].update(values)
    return parse_config(raw)


def regression_tolerances(task: TaskConfig) -> Dict[str, Union[float, str]]:
  """The task's max_regression, or the defaults for its type when none is configured."""
  return dict(task.max_regression) or dict(DEFAULT_MAX_REGRESSION[task.type])


def _check_evaluation(evaluation: EvaluationConfig, features: Sequence[FeatureConfig]) -> None:
  """Slices are by categorical features, each slicing (or cross) listed once."""
  types = {f.name: f.type for f in features}
  seen = set()
  for i, names in enumerate(evaluation.slices):
    for j, name in enumerate(names):
      path = f'evaluation.slices[{i}]' + (f'[{j}]' if len(names) > 1 else '')
      if name not in types:
        categorical = ', '.join(n for n, t in types.items() if t == 'categorical')
        raise ConfigError(f'{path}: {name!r} is not a feature; slices are by categorical '
                          f'features ({categorical})')
      if types[name] != 'categorical':
        raise ConfigError(f'{path}: {name!r} is a numeric feature; slices are by categorical '
                          'features (a slice per distinct number would be one per example)')
    if frozenset(names) in seen:
      raise ConfigError(f'evaluation.slices[{i}]: {list(names)!r} is listed twice')
    seen.add(frozenset(names))


def span_specs(pattern: str) -> Tuple[bool, bool]:
  """Whether a file pattern has a {SPAN} (or {SPAN:width}) spec, and whether it has all of
  the {YYYY} {MM} {DD} date specs: how TFX's ExampleGen driver finds spans."""
  return bool(re.search(_SPAN_SPEC, pattern)), bool(re.search(_DATE_SPECS, pattern))


_REMOTE = re.compile(r'^[a-z][a-z0-9+.-]*://')
_PATTERN_SPECS = re.compile(r'\{(SPAN|VERSION)(:[^}]*)?\}|\{YYYY\}|\{MM\}|\{DD\}')


def check_inputs(config: PipelineConfig) -> List[str]:
  """Checks, before a run starts, that what it reads is there: the input directory
  (`data.input_base`), at least one file matching `data.file_pattern` in it (its span and
  date specs as wildcards), and the curated schema (`data.schema`). Raises ConfigError naming
  the key. Remote storage (gs://, s3://) is left to the run itself: returns a note per such
  path, saying it was not checked."""
  data = config.data
  notes = []
  if _REMOTE.match(data.input_base):
    notes.append(f'data.input_base {data.input_base} is remote: not checked')
  elif not os.path.isdir(data.input_base):
    raise ConfigError(f'data.input_base: {data.input_base} is not a directory'
                      + ('' if os.path.exists(data.input_base) else ' (it does not exist)'))
  else:
    wildcard = _PATTERN_SPECS.sub('*', data.file_pattern)
    if not glob.glob(os.path.join(data.input_base, wildcard)):
      raise ConfigError(f'data.file_pattern: no file under data.input_base '
                        f'{data.input_base} matches {data.file_pattern!r} (as the glob '
                        f'{wildcard!r})')
  if data.schema:
    if _REMOTE.match(data.schema):
      notes.append(f'data.schema {data.schema} is remote: not checked')
    elif not os.path.isfile(data.schema):
      raise ConfigError(f'data.schema: {data.schema} does not exist (remove the key to let '
                        'SchemaGen infer a schema)')
  return notes


def _check_task_inputs(tasks: Sequence[TaskConfig]) -> None:
  """inputs_from names other tasks and has no cycle."""
  names = [t.name for t in tasks]
  for i, task in enumerate(tasks):
    for producer in task.inputs_from:
      if producer == task.name:
        raise ConfigError(f'tasks[{i}].inputs_from: a task cannot take its own estimate')
      if producer not in names:
        raise ConfigError(f'tasks[{i}].inputs_from: {producer!r} is not one of the tasks '
                          f'({", ".join(names)})')
  order_tasks(tasks)


def order_tasks(tasks: Sequence[TaskConfig]) -> List[TaskConfig]:
  """Tasks with every producer of `inputs_from` before its consumers; a cycle is an error."""
  by_name = {t.name: t for t in tasks}
  ordered: List[TaskConfig] = []
  visiting: List[str] = []

  def visit(task: TaskConfig) -> None:
    if task in ordered:
      return
    if task.name in visiting:
      cycle = ' -> '.join(visiting[visiting.index(task.name):] + [task.name])
      raise ConfigError(f'tasks: inputs_from forms a cycle: {cycle}')
    visiting.append(task.name)
    for producer in task.inputs_from:
      visit(by_name[producer])
    visiting.pop()
    ordered.append(task)

  for task in tasks:
    visit(task)
  return ordered


def _check_training(training: TrainingConfig, tasks: Sequence[TaskConfig]) -> None:
  stopping = training.early_stopping
  names = [t.name for t in tasks]
  if stopping is not None and stopping.monitor != 'loss' and stopping.monitor not in names:
    raise ConfigError(f'training.early_stopping.monitor: {stopping.monitor!r} is neither loss '
                      f'(the total) nor a task ({", ".join(names)})')


def _check_task_spaces(config: PipelineConfig) -> None:
  """A space's conditions name another binary task's label (0 or 1) or a categorical feature;
  a row weight is a log field of its own; the weight columns ingestion adds name no field."""
  binary_labels = {t.label: t for t in config.tasks if t.type == 'binary'}
  categorical = {f.name for f in config.categorical_features}
  labels = {t.label for t in config.tasks}
  fields = {f.name for f in config.features} | labels | {config.data.split_key}
  esmm_click = config.model.esmm_click_task if config.model.type == 'esmm' else None
  for i, task in enumerate(config.tasks):
    path = f'tasks[{i}]'
    if task.space is not None:
      if task.name == esmm_click:
        raise ConfigError(f'{path}.space: the esmm click task is trained and evaluated on '
                          'every impression; it cannot have a space')
      for name, value in task.space.where.items():
        where = f'{path}.space.where.{name}'
        if name == task.label:
          raise ConfigError(f"{where}: is the task's own label (use label_present)")
        if name in binary_labels:
          if value not in (0, 1) or isinstance(value, str):
            raise ConfigError(f'{where}: {value!r} is not a value of binary label {name!r} '
                              '(0 or 1)')
        elif name not in categorical:
          allowed = ', '.join(sorted(binary_labels.keys() - {task.label} | categorical))
          raise ConfigError(f'{where}: {name!r} is neither a binary task label nor a '
                            f'categorical feature ({allowed})')
    if task.weight is not None:
      if task.weight in labels or task.weight in categorical or task.weight == (
          config.data.split_key):
        raise ConfigError(f'{path}.weight: {task.weight!r} is a label, a categorical feature or '
                          'the split key; a row weight is a numeric field')
  fields.update(t.weight for t in config.tasks if t.weight)
  for i, task in enumerate(config.tasks):
    if task.weight_column in fields:
      raise ConfigError(f'tasks[{i}]: the weight column {task.weight_column!r} that ingestion '
                        'writes for its space is already a field of the log; rename the field '
                        'or the task')


def _check_model(model: ModelConfig, tasks: Sequence[TaskConfig]) -> None:
  """The esmm tasks (ModelConfig.check saw they are given) are binary tasks of the config."""
  if model.type != 'esmm':
    return
  by_name = {t.name: t for t in tasks}
  for key in ('esmm_click_task', 'esmm_conversion_task'):
    name = getattr(model, key)
    if name not in by_name:
      raise ConfigError(f'model.{key}: {name!r} is not one of the tasks ({", ".join(by_name)})')
    if by_name[name].type != 'binary':
      raise ConfigError(f'model.{key}: task {name!r} must be binary for esmm')
    if by_name[name].inputs_from:
      raise ConfigError(f'model.{key}: the esmm task {name!r} cannot also use inputs_from')
  if model.esmm_click_task == model.esmm_conversion_task:
    raise ConfigError('model.esmm_conversion_task: must differ from model.esmm_click_task')


def _check_score(config: PipelineConfig) -> None:
  """The score's terms are tasks or numeric features; its label a binary task; its groups a
  field the examples keep."""
  score = config.serving.score
  if score is None:
    return
  tasks = {t.name: t for t in config.tasks}
  numeric = [f.name for f in config.numeric_features]
  outputs = set(tasks) | ({'ctr', 'cvr', 'ctcvr'} if config.model.type == 'esmm' else set())
  if score.name in outputs:
    raise ConfigError(f'serving.score.name: {score.name!r} is already a model output')
  for name in score.weights:
    if name not in tasks and name not in numeric:
      raise ConfigError(f'serving.score.weights.{name}: is not one of the tasks '
                        f'({", ".join(tasks)}) or numeric features ({", ".join(numeric)})')
  label = _score_label_task(config)
  if label is None or label.type != 'binary':
    binary = ', '.join(t.name for t in config.tasks if t.type == 'binary')
    raise ConfigError(f'serving.score.label: {score.label!r} is not one of the binary tasks '
                      f'({binary}) or their labels')
  groups = [f.name for f in config.categorical_features] + [config.data.split_key]
  if score.group_by is not None and score.group_by not in groups:
    raise ConfigError(f'serving.score.group_by: {score.group_by!r} is not a feature of the '
                      f'examples to group by ({", ".join(dict.fromkeys(groups))})')


def _score_label_task(config: PipelineConfig) -> Optional[TaskConfig]:
  """The task serving.score.label names (by its name or its label), if any."""
  score = config.serving.score
  return None if score is None else next(
      (t for t in config.tasks if score.label in (t.name, t.label)), None)


def score_label(config: PipelineConfig) -> Optional[str]:
  """The label column the score is evaluated against."""
  task = _score_label_task(config)
  return None if task is None else task.label


def parse_config(raw: Any) -> PipelineConfig:
  """Validates a config given as plain data (as loaded from YAML or JSON): every value by its
  field's rule, then what one field says of another."""
  config = Section(PipelineConfig).parse(require_mapping(raw, 'config'), '')
  features, tasks, data = config.features, config.tasks, config.data
  seen: Dict[str, str] = {}
  for i, feature in enumerate(features):
    if feature.name in seen:
      raise ConfigError(f'features[{i}].name: {feature.name!r} is listed twice')
    seen[feature.name] = f'features[{i}]'
  task_names = set()
  for i, task in enumerate(tasks):
    if task.name in task_names:
      raise ConfigError(f'tasks[{i}].name: task {task.name!r} is listed twice')
    task_names.add(task.name)
    if task.label in seen:
      raise ConfigError(f'tasks[{i}].label: column {task.label!r} is already used by '
                        f'{seen[task.label]}; a label cannot also be a feature or another '
                        'task\'s label')
    seen[task.label] = f'tasks[{i}]'
  _check_task_inputs(tasks)
  _check_task_spaces(config)
  if data.split_key in {t.label for t in tasks}:
    raise ConfigError(f'data.split_key: {data.split_key!r} is a task label; split by an id '
                      'such as the user id')
  if data.split_key in {f.name for f in features if f.type == 'numeric'}:
    raise ConfigError(f'data.split_key: {data.split_key!r} is a numeric feature, which the '
                      'split cannot hash (TFX hashes text or integer ids); split by an id such '
                      'as the user id')
  _check_model(config.model, tasks)
  _check_score(config)
  _check_evaluation(config.evaluation, features)
  _check_training(config.training, tasks)
  return config


def json_schema() -> Dict[str, Any]:
  """The config's JSON Schema (draft 2020-12), from the rules the validator applies. What it
  cannot say (one entry against another: names listed twice, a label that is a feature,
  inputs_from and esmm tasks naming tasks, slices naming categorical features, min above max)
  only the validator checks."""
  schema = Section(PipelineConfig).schema()
  return {'$schema': 'https://json-schema.org/draft/2020-12/schema',
          'title': 'mtl-pipeline config', **schema}


def _absolute(path: Optional[str], base_dir: str) -> Optional[str]:
  if path is None or '://' in path or os.path.isabs(path):
    return path
  return os.path.normpath(os.path.join(base_dir, path))


class _UniqueKeyLoader(yaml.SafeLoader):
  """YAML's safe loader, refusing a key written twice in one mapping: YAML itself would keep
  the last value and drop the first without a word."""

  def construct_mapping(self, node, deep=False):
    if isinstance(node, yaml.MappingNode):
      seen = {}
      for key_node, _ in node.value:
        if key_node.tag == 'tag:yaml.org,2002:merge':
          continue  # `<<:` merges may override on purpose
        key = self.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if isinstance(key, str) and key in seen:
          raise ConfigError(f'duplicate key {key!r} on lines {seen[key]} and {line}: only '
                            'the last would be kept')
        seen[key] = line
    return super().construct_mapping(node, deep=deep)


def load_config(path: str, base_dir: Optional[str] = None) -> PipelineConfig:
  """Reads and validates a YAML config file.

  Relative paths in it (logs, schema, push directory) are taken relative to `base_dir`,
  the current directory by default, and returned absolute.
  """
  try:
    with open(path) as f:
      raw = yaml.load(f, Loader=_UniqueKeyLoader)  # a safe loader
  except FileNotFoundError:
    raise ConfigError(f'config file {path} does not exist') from None
  except yaml.YAMLError as e:
    raise ConfigError(f'{path}: not valid YAML: {e}') from None
  except ConfigError as e:
    raise ConfigError(f'{path}: {e}') from None
  try:
    config = parse_config(raw)
  except ConfigError as e:
    raise ConfigError(f'{path}: {e}') from None
  base_dir = base_dir or os.getcwd()
  data = dataclasses.replace(config.data,
                             input_base=_absolute(config.data.input_base, base_dir),
                             schema=_absolute(config.data.schema, base_dir))
  serving = dataclasses.replace(config.serving,
                                push_dir=_absolute(config.serving.push_dir, base_dir))
  return dataclasses.replace(config, data=data, serving=serving)

