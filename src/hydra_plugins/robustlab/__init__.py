"""robustlab's Hydra plugins. Hydra instantiates a launcher only from the `hydra_plugins` namespace, so the
launcher of `hydra/launcher=slurm` is named here; what it does is in `robustlab.cluster`."""

try:
    from robustlab.cluster import SlurmLauncher as _SlurmLauncher
except ImportError:  # the `scale` extra (hydra-submitit-launcher) is not installed: no SLURM launcher
    pass
else:

    class SlurmLauncher(_SlurmLauncher):
        """`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml): `robustlab.cluster.SlurmLauncher`."""
