"""Every ``>>>`` example in qualcl's docstrings runs and prints what it says."""

import doctest
import importlib
import pkgutil

import pytest

import qualcl

MODULES = sorted(m.name for m in pkgutil.walk_packages(qualcl.__path__, "qualcl.") if "_triton" not in m.name)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
