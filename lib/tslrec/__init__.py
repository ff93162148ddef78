"""TSLRec as a batch system."""

import os

# oneDNN keeps a compiled primitive with its buffers for every matmul shape it has run (1024 by default). Batches
# trimmed to their longest row bring a new shape nearly every step, so a long CPU training grew by gigabytes (16 GB
# on ML-1M; benchmarks/step_memory.py --varied). 64 holds every shape of a step (at 16 an FMLP-Rec or SASRec step
# compiled its matmuls again and again, 20-25% of its time); a setting of the user's own wins. oneDNN reads it at
# its first primitive, so it is set before any work, here.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
