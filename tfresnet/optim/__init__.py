"""Optimizers and learning-rate schedules: their registries, their builds, their settings."""
