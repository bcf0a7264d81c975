"""Generic fixtures shared by every test module."""

from pathlib import Path

import pytest

from lmrec.config import data_dir

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Tiny hand-written data files, one folder per source format."""
    return FIXTURES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared research datasets folder (LMREC_DATA_DIR, else ../shared/data); skips when absent."""
    root = data_dir()
    if not root.is_dir():
        pytest.skip(
            f"shared datasets not found at {root}: set LMREC_DATA_DIR to the folder that holds ml-100k/ etc."
        )
    return root
