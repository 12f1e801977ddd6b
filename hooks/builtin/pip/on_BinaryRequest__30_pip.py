"""Built-in on_BinaryRequest hook for pip: installs into the venv at $LIB_DIR/pip/venv. Contract: hooks/provider_hook.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the folder that holds `hooks/`
from hooks.provider_hook import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("pip", sys.argv[1:]))
