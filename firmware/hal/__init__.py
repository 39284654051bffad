"""Hardware behind small interfaces; each has a real backend and a fake chosen by config.

Nothing here opens a device at import time: backends open in ``open()``.
"""
