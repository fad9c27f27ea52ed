"""Evaluation: the ImageNet suites (metrics, datasets as distributed) and the evaluate command's runner."""
