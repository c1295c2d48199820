"""MCMC kernels on a [chains, d] state: base.py declares their protocol, registry.py every sampler once
(torch-free, so the config can read it), build.py makes a run's kernel, driver.py runs it."""
