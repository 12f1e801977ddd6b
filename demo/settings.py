"""Settings for the demo project (also the base of the test settings).

The database is an embedded SQLite file under DATA_DIR unless DATABASE_URL names another one
(PostgreSQL through psycopg 3 when several hosts share one database).
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATA_DIR") or BASE_DIR / "data").resolve()

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "insecure-demo-key-change-me"
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "base_models",
    "workers",
    "machine",
    "machine.demo",  # the main job: manage.py quickstart
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_config(data_dir: Path) -> dict:
    """DATABASE_URL if set (needs `pip install django-machine[postgres]` and dj-database-url), else
    the embedded SQLite file. No SQLite OPTIONS: the machine app tunes SQLite connections itself."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        try:
            import dj_database_url  # only the demo needs it (pip install 'django-machine[dev]')
        except ImportError:
            raise ImproperlyConfigured(
                "DATABASE_URL is set but dj-database-url is not installed: "
                "pip install 'django-machine[dev]' (or dj-database-url 'psycopg[binary]')"
            ) from None
        config = dj_database_url.parse(url, conn_max_age=0)
        if config["ENGINE"] == "django.db.backends.postgresql":
            config.setdefault("TEST", {})["NAME"] = os.environ.get("TEST_DATABASE_NAME") or None
        return config
    data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": data_dir / "index.sqlite3",
        "TEST": {"NAME": os.environ.get("TEST_DATABASE_NAME") or str(data_dir / "test.sqlite3")},
    }


DATABASES = {"default": database_config(DATA_DIR)}
if os.environ.get("DATABASE_NAME"):
    # Lets a worker subprocess started by a test open the test database the test runner created.
    DATABASES["default"]["NAME"] = os.environ["DATABASE_NAME"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"

# No LOGGING here: the commands log the app loggers to stderr at their -v level (see the README).
