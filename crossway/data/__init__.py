"""Data: tokenizers and vocabularies, readers for parallel text, batching, and task recipes."""
