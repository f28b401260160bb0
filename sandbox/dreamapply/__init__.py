"""dreamapply sandbox server."""
