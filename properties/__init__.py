"""handgrad's Hypothesis property suite (laws of backprop for any JAX function)."""
