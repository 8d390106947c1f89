"""Running a sweep's workers on a cluster's scheduler: ``slurm`` (``vitsweep submit slurm``)."""
