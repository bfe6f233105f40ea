"""Submit CycleGAN experiments to SLURM (or this machine) through submitit; follow, gather, cancel them.

Nothing here imports torch at module level: ``python -m launcher --help`` answers at once.
The training itself runs in the job, through :func:`cyclegan_dist.entry.run` (see ``launcher/job.py``).
"""
