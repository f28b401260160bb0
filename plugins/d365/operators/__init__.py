"""Task semantics: read inputs from paths, build hooks in execute, write outputs to paths."""
