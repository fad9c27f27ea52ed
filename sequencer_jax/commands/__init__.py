"""The command-line programs: training (main.py) and weight conversion (convert_torch_weights.py)."""
