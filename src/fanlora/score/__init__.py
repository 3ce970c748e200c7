"""Step 2: the importance of every LoRA module (AB-score, Shapley values, sensitivity)."""
