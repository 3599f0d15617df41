"""The run report: written from the shared run, each plot present, rendered by headless Chromium."""

import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from pipeline.report import write_report

PLOTS = ['uncertainty.png', 'losses.png', 'components.png', 'calibration_click.png',
         'calibration_conversion.png']
# The components plot draws completed components' bars in this colour (#4a90d9).
BAR_RGB = np.array([74, 144, 217])


@pytest.fixture(scope='module')
def report(e2e_run, tmp_path_factory):
  run_dir = tmp_path_factory.mktemp('report') / 'run'
  # Only run_summary.json is copied: the report reads the artifacts it points to.
  run_dir.mkdir()
  shutil.copy(e2e_run['run_dir'] / 'run_summary.json', run_dir)
  return write_report(str(run_dir))


def test_every_plot_is_written_and_not_empty(report):
  out_dir = os.path.dirname(report)
  for name in PLOTS:
    path = os.path.join(out_dir, name)
    assert os.path.getsize(path) > 5000, name
    with Image.open(path) as image:
      assert image.size[0] > 300 and image.size[1] > 150, name
  page = open(report).read()
  for name in PLOTS:
    assert f'src="{name}"' in page
  for text in ('Per-task checks', 'click', 'conversion', 'dwell', 'Quarantine reason'.lower(),
               'malformed_json', 'Nothing was served'):
    assert text in page, text


def test_page_renders_in_headless_chromium(report, tmp_path):
  chromium = shutil.which('chromium') or shutil.which('chromium-browser')
  assert chromium, 'Debian\'s chromium package is needed (make test installs it)'
  screenshot = tmp_path / 'report.png'
  subprocess.run(
      [chromium, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
       '--window-size=1200,4000', f'--screenshot={screenshot}', f'file://{report}'],
      check=True, capture_output=True, timeout=120)
  with Image.open(screenshot) as image:
    pixels = np.asarray(image.convert('RGB')).astype(int)
  assert pixels.shape[0] >= 4000 and pixels.shape[1] >= 1200
  not_white = np.any(pixels < 240, axis=-1).mean()
  assert not_white > 0.02, not_white  # text, tables and plots were drawn
  # The plots' own colours are on the page: the images loaded, not just their alt text.
  bars = np.all(np.abs(pixels - BAR_RGB) < 12, axis=-1).sum()
  assert bars > 500, bars


def test_report_command(report, tmp_path, capsys):
  run_dir = os.path.dirname(os.path.dirname(report))
  assert cli.main(['report', run_dir]) == 0
  assert 'report/index.html' in capsys.readouterr().out
  assert cli.main(['report', str(tmp_path)]) == 2
  assert 'run_summary.json does not exist' in capsys.readouterr().err
