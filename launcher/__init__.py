"""The ``mesh`` command: launches the router and attaches containers to the mesh."""
