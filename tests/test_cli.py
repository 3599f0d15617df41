"""`mtlp` as a user runs it: progress lines and a summary on the terminal, the rest in the log."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, SAMPLE_CONFIG, copy_e2e_run
from pipeline import cli

MTLP = os.path.join(os.path.dirname(sys.executable), 'mtlp')
COMMANDS = ['generate-logs', 'validate-config', 'run', 'compile', 'submit', 'schedule',
            'unschedule', 'serve-check', 'report']
NOISE = ['cuda', 'INFO:absl', 'Traceback', 'oneDNN', 'WARNING:', 'FutureWarning']


def _mtlp(*args, cwd=REPO):
  return subprocess.run([MTLP, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.parametrize('command', COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([command, '--help'])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert 'usage: mtlp ' + command in out
  assert f'example:\n  mtlp {command} ' in out


def test_user_errors_give_one_line_and_exit_code_2(tmp_path):
  result = _mtlp('run', '--config', str(tmp_path / 'missing.yaml'))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f'mtlp: config error: config file {tmp_path / "missing.yaml"} does not exist']
  assert 'Traceback' not in result.stderr
  bad = tmp_path / 'bad.yaml'
  bad.write_text('name: x\nfeatures: []\n')
  result = _mtlp('validate-config', '--config', str(bad))
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def _config_file(tmp_path, **data):
  with open(SAMPLE_CONFIG) as f:
    raw = yaml.safe_load(f)
  raw['data'].update(data)
  path = tmp_path / 'config.yaml'
  path.write_text(yaml.safe_dump(raw))
  return str(path)


def test_missing_inputs_are_named_before_a_run_starts(tmp_path, capsys):
  """validate-config and run check the log directory, that the file pattern matches a file
  in it, and the schema file, naming the key, instead of failing a minute into the run."""
  logs = tmp_path / 'logs'
  schema = os.path.join(REPO, 'schemas', 'impressions_schema.pbtxt')
  cases = [
      ({'input_base': str(logs), 'schema': schema},
       f'data.input_base: {logs} is not a directory (it does not exist)'),
      ({'input_base': str(tmp_path / 'empty'), 'schema': schema},
       f"data.file_pattern: no file under data.input_base {tmp_path / 'empty'} matches "
       f"'day={{YYYY}}-{{MM}}-{{DD}}/*.jsonl*' (as the glob 'day=*-*-*/*.jsonl*')"),
  ]
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'day=2026-11-01').mkdir()  # a partition, but no file in it
  (tmp_path / 'day=2026-11-01').mkdir()
  (tmp_path / 'day=2026-11-01' / 'part.jsonl').write_text('{}\n')
  cases.append(({'input_base': str(tmp_path), 'schema': str(tmp_path / 'schema.pbtxt')},
                f'data.schema: {tmp_path / "schema.pbtxt"} does not exist'))
  for data, message in cases:
    config = _config_file(tmp_path, **data)
    for command in (['validate-config'], ['run', '--output', str(tmp_path / 'run')]):
      assert cli.main(command + ['--config', config]) == 2
      err = capsys.readouterr().err
      assert err.startswith(f'mtlp: config error: {message}'), (command, err)
  assert not (tmp_path / 'run').exists()
  config = _config_file(tmp_path, input_base=str(tmp_path), schema=schema)
  assert cli.main(['validate-config', '--config', config]) == 0
  remote = _config_file(tmp_path, input_base='gs://bucket/logs', schema=schema)
  assert cli.main(['validate-config', '--config', remote]) == 0
  assert 'data.input_base gs://bucket/logs is remote: not checked' in capsys.readouterr().out


def test_a_second_run_into_the_same_output_directory_is_refused(e2e_run, tmp_path, capsys):
  """Two runs sharing one output directory would share its ML Metadata and run summary, and
  each report the other's push: the second refuses, naming the first."""
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top
  output = tmp_path / 'run'
  output.mkdir()
  config = tmp_path / 'config.yaml'
  config.write_text(yaml.safe_dump(e2e_run['config'].to_dict()))
  with local_runner.output_dir_lock(str(output)):
    assert cli.main(['run', '--config', str(config), '--output', str(output)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(
      f'mtlp: output directory {output} is in use by another run (pid {os.getpid()}, '
      'started '), err
  assert not (output / 'metadata.sqlite').exists()


def test_ctrl_c_prints_one_line_and_marks_the_summary(e2e_run, tmp_path):
  root = copy_e2e_run(e2e_run, tmp_path / 'interrupted')
  config_path = root / 'config.yaml'
  config_path.write_text(yaml.safe_dump(e2e_run['config'].to_dict()))
  log = root / 'run' / 'run.log'
  process = subprocess.Popen(
      [MTLP, 'run', '--config',
       str(config_path), '--output', str(root / 'run'), '--no-cache'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and process.poll() is None and not (
      log.exists() and 'Component LogExampleGen is running' in log.read_text(errors='replace')):
    time.sleep(0.5)
  process.send_signal(signal.SIGINT)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 130, (out[-2000:], err[-3000:])
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('interrupted after '), err[-3000:]
  assert 'Traceback' not in err and 'Traceback' not in out
  with open(root / 'run' / 'run_summary.json') as f:
    summary = json.load(f)
  assert summary['interrupted'] is True and summary['error'] == 'interrupted (Ctrl-C)'


def test_zero_train_steps_is_refused_not_ignored(tmp_path, capsys):
  code = cli.main(['run', '--config', SAMPLE_CONFIG, '--train-steps', '0',
                   '--output', str(tmp_path / 'run')])
  assert code == 2
  assert 'training.train_steps: 0 must be >= 1' in capsys.readouterr().err
  assert not os.listdir(tmp_path)


def test_run_shows_progress_and_summary_and_logs_the_rest(e2e_run, tmp_path):
  """A rerun of the shared run's pipeline (all components cached) through the real CLI."""
  root = copy_e2e_run(e2e_run, tmp_path / 'cli')
  config = e2e_run['config'].to_dict()
  config_path = root / 'config.yaml'
  config_path.write_text(yaml.safe_dump(config))
  result = _mtlp('run', '--config', str(config_path), '--output', str(root / 'run'))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  for node in ('LogExampleGen', 'StatisticsGen', 'Transform', 'Trainer', 'Evaluator', 'Pusher'):
    assert any(line.split()[:2] == [node, 'cached'] for line in out.splitlines()), (node, out)
  assert 'learned sigma / weight' in out and 'auc' in out
  assert 'finished in' in out
  for noise in NOISE:
    assert noise not in out and noise not in result.stderr, noise
  log = (root / 'run' / 'run.log').read_text()
  assert 'Component Trainer is running' in log and 'A cached execution' in log
