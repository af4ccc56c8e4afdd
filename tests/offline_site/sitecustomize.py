"""Started by tests.offline.offline_env(): this Python runs without the network."""
import os
import sys

if os.environ.get("ROBUSTLENS_TEST_OFFLINE") == "1":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import offline
    offline.block_network()
