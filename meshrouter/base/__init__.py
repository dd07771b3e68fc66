"""What every package may import and that imports nothing of ours: constants, errors,
names, the log limiter, the checks of untrusted input, the request boundary.
"""
