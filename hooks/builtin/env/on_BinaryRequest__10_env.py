"""Built-in on_BinaryRequest hook for env: resolves a binary already on PATH (never installs). Contract: hooks/provider_hook.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the folder that holds `hooks/`
from hooks.provider_hook import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("env", sys.argv[1:]))
