"""SLURM as one package: the backend (jobs as array elements, their records) and the adapter that holds
every use of submitit, its private members included."""
