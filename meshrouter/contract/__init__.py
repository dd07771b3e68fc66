"""What the client and the daemon share: the typed status schema, the router's options, the
API client and its typed requests, the state directory.  Light: the client loads it on
every command.
"""
