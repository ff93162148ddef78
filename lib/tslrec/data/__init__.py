"""The data stage: raw logs to interactions, stable ids, sequences and splits; the synthetic dataset."""
