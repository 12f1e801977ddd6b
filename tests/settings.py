"""Test settings: the demo project plus the example downstream app."""

from demo.settings import *  # noqa: F403
from demo.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.exampleapp", "tests.archiver"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Offline machines: tests that want the public-IP lookup turn it on explicitly.
MACHINE_PUBLIC_IP_LOOKUP = False
