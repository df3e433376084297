"""scripts/accelerator.sh: what scripts/setup.sh installs for (the extra of
setup.cfg), detected or overridden, and nothing hiding accelerators from
JAX in the scripts that train."""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASH = shutil.which('bash')


def _accelerator(tmp_path, accelerator=None, nvidia_smi=None):
  """Runs the script with only a fake nvidia-smi (if given) on PATH."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  if nvidia_smi is not None:
    fake = bin_dir / 'nvidia-smi'
    fake.write_text(f'#!{BASH}\nprintf "%s" {nvidia_smi!r}\n')
    fake.chmod(0o755)
  env = {'PATH': f'{bin_dir}:/usr/bin:/bin'}
  if accelerator is not None:
    env['ACCELERATOR'] = accelerator
  return subprocess.run([BASH, str(ROOT / 'scripts' / 'accelerator.sh')],
                        env=env, capture_output=True, text=True, check=False,
                        timeout=30)


def _has_tpu_devices() -> bool:
  return any(pathlib.Path('/dev').glob('accel[0-9]*')) or any(
      pathlib.Path('/dev/vfio').glob('[0-9]*'))


@pytest.mark.parametrize('accelerator', ['cpu', 'cuda', 'tpu'])
def test_the_override_is_taken_as_is(tmp_path, accelerator):
  out = _accelerator(tmp_path, accelerator,
                     nvidia_smi='GPU 0: NVIDIA H200 (UUID: GPU-1)\n')
  assert (out.returncode, out.stdout) == (0, f'{accelerator}\n')


def test_a_bad_override_is_one_line(tmp_path):
  out = _accelerator(tmp_path, 'rocm')
  assert out.returncode == 2 and out.stdout == ''
  assert out.stderr == ('error: ACCELERATOR=rocm is not one of cpu, cuda, '
                        'tpu.\n')


def test_an_nvidia_gpu_is_detected(tmp_path):
  out = _accelerator(tmp_path, nvidia_smi='GPU 0: NVIDIA H200 (UUID: x)\n')
  assert (out.returncode, out.stdout) == (0, 'cuda\n')


def test_nvidia_smi_without_a_gpu_is_not_a_gpu(tmp_path):
  # nvidia-smi installed with its driver, but no GPU listed.
  out = _accelerator(tmp_path, nvidia_smi='No devices found.\n')
  assert out.returncode == 0
  assert out.stdout == ('tpu\n' if _has_tpu_devices() else 'cpu\n')


def test_the_training_scripts_do_not_hide_accelerators():
  for script in ('train.sh', 'train_conditional.sh'):
    text = (ROOT / 'scripts' / script).read_text()
    assert 'CUDA_VISIBLE_DEVICES' not in text, script
    assert 'JAX_PLATFORMS' not in text, script
  setup = (ROOT / 'scripts' / 'setup.sh').read_text()
  assert 'scripts/accelerator.sh' in setup


@pytest.mark.skipif(os.path.exists('/dev/nvidia0') or _has_tpu_devices(),
                    reason='a machine with an accelerator')
def test_this_machine_is_a_cpu_machine(tmp_path):
  # CI's machines have neither GPU nor TPU: the CPU build is installed.
  out = subprocess.run([BASH, str(ROOT / 'scripts' / 'accelerator.sh')],
                       capture_output=True, text=True, check=False,
                       timeout=30, env={**os.environ, 'ACCELERATOR': ''})
  if shutil.which('nvidia-smi'):
    pytest.skip('nvidia-smi is installed here')
  assert out.stdout == 'cpu\n'
