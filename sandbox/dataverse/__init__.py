"""dataverse sandbox server."""
