"""Requests to TF Serving for the exported model, built with the tensorflow-serving-api protos.

Shared by the Pusher (warmup requests written into the pushed version) and `mtlp serve-check`
(which replays them), so both speak exactly what a client sends:

- gRPC `Predict` on `serving_default`: one string tensor of serialized `tf.Example`s;
- REST `:predict` on `predict_instances`: JSON instances, one raw value per feature.
"""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
from typing import Any, Dict, Iterable, List, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from trainer.export import INSTANCES_SIGNATURE, SERVING_SIGNATURE

WARMUP_FILE = 'assets.extra/tf_serving_warmup_requests'
# Sample eval examples with the Evaluator's predictions for them, for `mtlp serve-check`.
SAMPLE_PREDICTIONS_FILE = 'assets.extra/sample_predictions.json'


def signature_inputs(signature) -> Dict[str, tf.TensorSpec]:
  """{input key: TensorSpec} of a loaded SavedModel signature."""
  return dict(signature.structured_input_signature[1])


def predict_request(model_name: str, signature_name: str,
                    inputs: Mapping[str, np.ndarray]) -> predict_pb2.PredictRequest:
  request = predict_pb2.PredictRequest(
      model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name))
  for key, value in inputs.items():
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
  return request


def example_inputs(signature, serialized_examples: Sequence[bytes]) -> Dict[str, np.ndarray]:
  """Inputs of `serving_default`: its single string input holds the serialized examples."""
  (key,) = signature_inputs(signature)
  return {key: np.array(list(serialized_examples), dtype=object)}


def instances_from_examples(signature, serialized_examples: Iterable[bytes]
                            ) -> List[Dict[str, Any]]:
  """REST instances (JSON-able dicts, one raw value per feature) for `predict_instances`,
  read from tf.Examples. A feature an example lacks gets the value `serving_default` fills in
  for it ('' or 0), as the REST signature needs every input."""
  specs = signature_inputs(signature)
  instances = []
  for serialized in serialized_examples:
    example = tf.train.Example.FromString(serialized)
    instance: Dict[str, Any] = {}
    for name, spec in specs.items():
      if name not in example.features.feature:
        instance[name] = '' if spec.dtype == tf.string else (
            0 if spec.dtype.is_integer else 0.0)
        continue
      feature = example.features.feature[name]
      if spec.dtype == tf.string:
        instance[name] = feature.bytes_list.value[0].decode('utf-8')
      elif spec.dtype.is_integer:
        instance[name] = int(feature.int64_list.value[0])
      else:
        instance[name] = float(feature.float_list.value[0])
    instances.append(instance)
  return instances


class RestRequestError(ValueError):
  """A REST request body that TF Serving refuses (HTTP 400), with TF Serving's message."""


_FLOAT_MAX_INT = (1 << 24) - 1  # the largest integer a float32 holds exactly
_FLOAT_MAX = float(np.finfo(np.float32).max)


def _type_name(dtype: tf.DType) -> str:
  """TensorFlow's DataTypeString of a type, as TF Serving's messages give it."""
  return {tf.float32: 'float', tf.float64: 'double'}.get(dtype, dtype.name)


def _json_type(value: Any) -> str:
  """rapidjson's name of a JSON value's type, as TF Serving's messages give it."""
  if value is None:
    return 'Null'
  if isinstance(value, bool):
    return 'True' if value else 'False'
  if isinstance(value, (int, float)):
    return 'Number'
  if isinstance(value, str):
    return 'String'
  return 'Array' if isinstance(value, list) else 'Object'


def _json_value(value: Any, dtype: tf.DType) -> Any:
  """One JSON scalar as TF Serving converts it for an input of `dtype`
  (tensorflow_serving/util/json_tensor.cc, AddValueToTensor): a string input takes only a JSON
  string (or `{"b64": ...}`), never a number; a float input takes any number (NaN and
  Infinity too: the body is parsed with kParseNanAndInfFlag) that float32 holds without loss
  (integers up to 2^24 - 1, decimals within its range); an int64 input takes integers only."""
  refused = RestRequestError(f'JSON Value: {json.dumps(value)} Type: {_json_type(value)} is not '
                             f'of expected type: {_type_name(dtype)}')
  if dtype == tf.string:
    if isinstance(value, str):
      return value.encode('utf-8')
    if isinstance(value, dict) and set(value) == {'b64'} and isinstance(value['b64'], str):
      return base64.b64decode(value['b64'])
    raise refused
  is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
  if dtype.is_floating:
    if not is_number:
      raise refused
    if isinstance(value, int):
      lossless = abs(value) <= _FLOAT_MAX_INT
    else:
      lossless = not math.isfinite(value) or abs(value) <= _FLOAT_MAX
    if dtype == tf.float32 and not lossless:
      raise RestRequestError(f'Cannot convert JSON value: {json.dumps(value)} to float without '
                             'loss of precision.')
    return value
  if dtype.is_integer:
    if not is_number or not isinstance(value, int):
      raise refused
    return value
  raise RestRequestError(f'Conversion of JSON Value: {json.dumps(value)} to type: '
                         f'{_type_name(dtype)}')


def instances_to_inputs(signature, instances: Sequence[Mapping[str, Any]]
                        ) -> Dict[str, np.ndarray]:
  """Columnar tensors from REST row-format instances, as TF Serving's REST API builds them
  (tensorflow_serving/util/json_tensor.cc, FillTensorMapFromInstancesList): each instance an
  object whose keys are exactly the signature's inputs, each value converted by the input's
  type (`_json_value`). Raises RestRequestError with TF Serving's message, which names the
  instance and the key (the feature)."""
  specs = signature_inputs(signature)
  columns: Dict[str, List[Any]] = {name: [] for name in specs}
  for index, instance in enumerate(instances):
    for key, value in instance.items():
      where = f"Failed to process element: {index} key: {key} of 'instances' list. Error: "
      if key not in specs:
        raise RestRequestError(f'{where}JSON object: does not have named input: {key}')
      try:
        columns[key].append(_json_value(value, specs[key].dtype))
      except RestRequestError as e:
        raise RestRequestError(f'{where}{e}') from None
    if set(instance) != set(specs):
      raise RestRequestError(
          f"Failed to process element: {index} of 'instances' list. JSON object: "
          f'{json.dumps(instance, default=str)} keys must be equal to: '
          f'{",".join(sorted(specs))}')
  return {name: np.array(values, dtype=object) if specs[name].dtype == tf.string
          else np.array(values, dtype=specs[name].dtype.as_numpy_dtype)
          for name, values in columns.items()}


def warmup_logs(model_name: str, loaded_model, serialized_examples: Sequence[bytes]
                ) -> List[prediction_log_pb2.PredictionLog]:
  """Warmup requests: serving_default at batch 1 and at the full batch, and the REST
  signature at the full batch, so TF Serving traces every signature and batch shape used."""
  serving = loaded_model.signatures[SERVING_SIGNATURE]
  requests = [
      predict_request(model_name, SERVING_SIGNATURE,
                      example_inputs(serving, serialized_examples[:1])),
      predict_request(model_name, SERVING_SIGNATURE,
                      example_inputs(serving, serialized_examples)),
  ]
  if INSTANCES_SIGNATURE in loaded_model.signatures:
    instances_signature = loaded_model.signatures[INSTANCES_SIGNATURE]
    instances = instances_from_examples(instances_signature, serialized_examples)
    requests.append(predict_request(model_name, INSTANCES_SIGNATURE,
                                    instances_to_inputs(instances_signature, instances)))
  return [prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
      request=request)) for request in requests]


def serialize_warmup(logs: Iterable[prediction_log_pb2.PredictionLog]) -> bytes:
  """The TFRecord file TF Serving reads from assets.extra/tf_serving_warmup_requests."""
  with tempfile.TemporaryDirectory() as temp:
    path = os.path.join(temp, 'warmup')
    with tf.io.TFRecordWriter(path) as writer:
      for log in logs:
        writer.write(log.SerializeToString())
    with open(path, 'rb') as f:
      return f.read()


def read_warmup(path: str) -> List[prediction_log_pb2.PredictionLog]:
  return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
          for record in tf.data.TFRecordDataset(path)]


def request_inputs(request: predict_pb2.PredictRequest) -> Dict[str, np.ndarray]:
  return {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}


def run_request(loaded_model, request: predict_pb2.PredictRequest) -> Dict[str, np.ndarray]:
  """Runs a PredictRequest against a SavedModel loaded with the serving tag, as TF Serving
  dispatches it: by signature name (default serving_default), inputs by key."""
  signature = loaded_model.signatures[request.model_spec.signature_name or SERVING_SIGNATURE]
  outputs = signature(**{key: tf.constant(value)
                         for key, value in request_inputs(request).items()})
  return {name: value.numpy() for name, value in outputs.items()}
