"""TSLRec as a batch system."""
