"""``conf/outer/<name>.yaml``: one option per method, named like its file, whose values are
the method's defaults and whose seed follows the run's ``seed``."""

from __future__ import annotations

import dataclasses

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

NAMES = ["implicit", "soba", "saba", "amigo", "stocbio", "ttsa", "unrolled"]


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_the_method_with_its_defaults(name):
    with initialize_config_module("bilevel.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"outer={name}", "seed=7"])
    method = instantiate(cfg.outer)
    assert method.name == name
    assert type(method).__module__ == f"bilevel.outer.{name}"
    assert method.seed == 7
    default = type(method)()
    for f in dataclasses.fields(method):
        if f.name not in ("seed", "adjoint"):
            assert getattr(method, f.name) == getattr(default, f.name), f.name
