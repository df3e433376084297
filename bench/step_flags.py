"""The flags for how the train step runs on this host: shared by bench.train
and bench.profile_step (which imports bench.train), as absl allows one
definition of each flag name.
"""

from absl import flags

CPU_DEVICES = flags.DEFINE_integer(
    'cpu-devices', 0, 'JAX data-parallel CPU devices (0: as training picks, '
    'one per core; 1: one device)')
MICROBATCHES = flags.DEFINE_integer(
    'microbatches', 0, 'parts each device batch is processed in (0: as '
    'training picks, see config.microbatches)')
