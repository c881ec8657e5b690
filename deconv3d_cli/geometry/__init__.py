"""Pure math of shapes: lengths, crops, halos, output grids and affines, tile plans, boundary rows, layouts.

Every size the tool uses comes from here, so the engine, the tiler, the writers and the reports
cannot disagree. This part imports nothing else of the package (only numpy and the standard library),
and is tested on its own.
"""
