"""A minimal worker for the concurrency test: wait for the go-file, then claim and tick one Binary.

Usage: python -m tests.binary.tick_worker BINARY_ID GO_FILE HOOK_DIR LIB_DIR DATA_DIR
Prints "ticked" (won the claim and ran the install) or "lost" (another worker holds the row).
"""

import os
import sys
import time

import django


def main(binary_id: str, go_file: str, hook_dir: str, lib_dir: str, data_dir: str) -> int:
    django.setup()
    from django.conf import settings

    settings.MACHINE_HOOK_DIRS = (hook_dir,)
    settings.MACHINE_LIB_DIR = lib_dir
    settings.MACHINE_DATA_DIR = data_dir
    from machine.models import Binary

    deadline = time.monotonic() + 30
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            return 2
        time.sleep(0.005)
    binary = Binary.objects.get(pk=binary_id)
    print("ticked" if binary.tick_claimed() else "lost", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
