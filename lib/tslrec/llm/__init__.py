"""The LLM side: loading, the TSLRec module (prompt with injected item vectors, group head), SFT, artefacts."""
