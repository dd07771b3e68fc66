"""Container engines: the Docker API client, the engine event watcher, the Docker network
plugin.
"""
