"""Sample-quality metrics (spec §6.2): generative perplexity under a judge LM, and entropy."""
