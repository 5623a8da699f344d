"""The module contract, checked for EVERY registered embedding, encoder, decoder, pooling and
target (built-in or third-party): build tiny, forward, backward, no NaN, state-dict round trip,
Config round trip, Config refuses unknown keys, and (targets) weight tying without a duplicate.

A new module is covered by adding it to the registry; nothing here names one. The checks are
`tpcli.testing.contract`'s, the same a third party runs on its own modules with one line in its
conftest (`tpcli.testing.contract_plugin`).
"""

from __future__ import annotations

import pytest

from tpcli.plugins import get_plugins
from tpcli.testing import contract

REGISTRY = get_plugins().registry
CASES = [
    pytest.param(check, e.kind, e.name, id=f"{check}-{e.kind}-{e.name}")
    for kind in contract.KINDS
    for e in REGISTRY.entries(kind)
    for check in contract.CHECKS
    if contract.applies(check, kind, REGISTRY.get(kind, e.name))
]


@pytest.mark.parametrize(("check", "kind", "name"), CASES)
def test_contract(check: str, kind: str, name: str) -> None:
    contract.CHECKS[check](kind, REGISTRY.get(kind, name))
