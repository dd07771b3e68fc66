"""The control protocol, sans-IO: crypto suites, the handshake, the key ring, framing, the
control connection, the data-plane wire format.
"""
