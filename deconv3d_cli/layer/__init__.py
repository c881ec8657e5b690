"""What to compute, without computing it: the layer spec, presets and the Keras vocabulary.

`LayerSpec` (spec.py) with its refusals, the weight-free presets, initializers, constraints,
regularizer formulas and activation names. Pure numpy and YAML: this part may import `geometry`
and `errors`, never torch, the engine, io, run or the CLI (tests/test_architecture.py checks).
"""
