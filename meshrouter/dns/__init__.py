"""Names: the records CRDT, the answerer, the trio DNS server."""
