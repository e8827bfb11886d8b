"""The examples in the public docstrings run and say what they show."""

import doctest

import pytest

import symce
import symce.api
import symce.losses
import symce.proof


@pytest.mark.parametrize("module", [symce, symce.api, symce.losses, symce.proof],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
