"""Evaluation: inference and metrics, scores, predictions, Grad-CAM, pictures, the report,
comparisons and the classical baselines."""
