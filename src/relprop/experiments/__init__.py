"""Experiments: training and evaluating the thesis architectures on MAJ tasks, the thesis grid, text runs."""
