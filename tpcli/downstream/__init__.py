"""Downstream use of a trained model: tasks (`tasks`), fine-tuning and inference (`finetune`),
evaluation (`evaluate`) and generation (`generate`)."""
