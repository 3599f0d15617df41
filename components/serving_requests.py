"""Requests to TF Serving for the exported model, built with the tensorflow-serving-api protos.

Shared by the Pusher (warmup requests written into the pushed version) and `mtlp serve-check`
(which replays them), so both speak exactly what a client sends:

- gRPC `Predict` on `serving_default`: one string tensor of serialized `tf.Example`s;
- REST `:predict` on `predict_instances`: JSON instances, one raw value per feature.
"""

from __future__ import annotations

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
  read from tf.Examples. A feature an example lacks is left out of its instance."""
  specs = signature_inputs(signature)
  instances = []
  for serialized in serialized_examples:
    example = tf.train.Example.FromString(serialized)
    instance: Dict[str, Any] = {}
    for name, spec in specs.items():
      if name not in example.features.feature:
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


def instances_to_inputs(signature, instances: Sequence[Mapping[str, Any]]
                        ) -> Dict[str, np.ndarray]:
  """Columnar tensors from REST row-format instances, as TF Serving builds them."""
  specs = signature_inputs(signature)
  inputs = {}
  for name, spec in specs.items():
    missing = [i for i, instance in enumerate(instances) if name not in instance]
    if missing:
      raise ValueError(f'instance {missing[0]} has no value for input {name!r}; '
                       f'{INSTANCES_SIGNATURE} needs every feature')
    values = [instance[name] for instance in instances]
    if spec.dtype == tf.string:
      inputs[name] = np.array([str(v).encode('utf-8') for v in values], dtype=object)
    else:
      inputs[name] = np.array(values, dtype=spec.dtype.as_numpy_dtype)
  return inputs


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
