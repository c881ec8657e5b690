"""Runs: the per-output job (every decision made once), the threaded local runner, batches, Dask.

`job.py` opens the input, plans, settles the formulation, opens the writer and builds the result
record; `local.py` (threads), `batch.py` (many files) and `dask/` (a cluster) all call it. This part
may import every part below the CLI (layer, geometry, engine, io, importers); never click or the CLI.
"""
