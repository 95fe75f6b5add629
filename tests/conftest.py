import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "examples", "data")
ETHANOL = os.path.join(DATA, "rmd17_ethanol")


@pytest.fixture(scope="session")
def ethanol_train():
    return os.path.join(ETHANOL, "train.xyz")


@pytest.fixture(scope="session")
def ethanol_isolated():
    return os.path.join(ETHANOL, "isolated_atoms.xyz")
