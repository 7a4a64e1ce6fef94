"""Retraining: triggers, dataset assembly, training and MLflow tracking."""
