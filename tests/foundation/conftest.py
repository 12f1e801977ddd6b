from tests.conftest import ROOT  # noqa: F401  (re-exported for the tests in this folder)
