"""Test settings: the demo project plus the example downstream app."""

import os

from demo.settings import *  # noqa: F403
from demo.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.exampleapp", "tests.archiver"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Offline machines: tests that want the public-IP lookup turn it on explicitly.
MACHINE_PUBLIC_IP_LOOKUP = False

# Runner subprocesses started by the tests take their retry schedule from the environment.
WORKERS_RETRY_BASE = float(os.environ.get("WORKERS_RETRY_BASE", "10"))
WORKERS_MAX_ATTEMPTS = int(os.environ.get("WORKERS_MAX_ATTEMPTS", "10"))
WORKERS_LISTEN = os.environ.get("WORKERS_LISTEN", "auto") != "off" and "auto"
WORKERS_POOLED = os.environ.get("WORKERS_POOLED", "") == "1"
