"""The same jobs as Dask tasks (`--scheduler`): a tile per task, or a whole small file per task.

dask, distributed and zarr are the optional extra; nothing here imports them until a scheduler is asked for.
"""
