import pytest


@pytest.fixture(scope="session")
def tiny_miniature_root():
    """A miniature benchmark with one or two images per split (cached like the full one, in $DGSS_CACHE_DIR)."""
    from datasets.miniature import MiniatureParams, ensure_miniature

    return ensure_miniature(params=MiniatureParams(count_scale=0.01, domains=("gta5", "cityscapes", "bdd100k",
                                                                            "mapillary")))
