"""The research code built on the method: the CPU study (study.py), the equal-compute experiments
(compute_study.py), the synthetic tasks (synth.py, separation.py) and the CoT -> pause curriculum
(curriculum.py). Run from the repo root, e.g. `python -m experiments.study --preset=cpu`.
The method's own files (the top level) never import this package."""
