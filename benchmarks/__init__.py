"""The measurements behind benchmarks/README.md: speed against the notebook (bench.py), the
models' costs (models.py), the study's grid (study.py), numerics and dropout checks, and the
notebook's own code (notebook.py) to measure against.
"""
