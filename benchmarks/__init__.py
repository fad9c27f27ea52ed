"""Benchmark programs: the model beside timm (`model_speed`), the input pipeline (`pipeline_speed`)."""
