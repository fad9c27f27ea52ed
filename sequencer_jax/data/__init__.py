"""Input pipeline. The only part of sequencer_jax that imports TensorFlow (CPU only)."""
