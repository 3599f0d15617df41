"""`mtlp` as a user runs it: progress lines and a summary on the terminal, the rest in the log."""

import os
import subprocess
import sys

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
