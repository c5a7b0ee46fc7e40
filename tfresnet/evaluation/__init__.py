"""Evaluation: metrics, scores, predictions, Grad-CAM, pictures, the report, comparisons.

It also holds the classical baselines: kNN and a linear probe on pixels or a run's features.
"""
