import pytest


@pytest.fixture(scope="session")
def tiny_miniature_root():
    """A miniature benchmark with one or two images per split (cached like the full one, in $DGSS_CACHE_DIR)."""
    from datasets.miniature import MiniatureParams, ensure_miniature

    return ensure_miniature(params=MiniatureParams(count_scale=0.01, domains=("gta5", "cityscapes", "bdd100k",
                                                                            "mapillary")))


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory):
    """A quarter-size miniature benchmark (every domain), for end-to-end runs that train and evaluate."""
    from datasets.miniature import MiniatureParams, ensure_miniature

    return ensure_miniature(tmp_path_factory.mktemp("cache"), params=MiniatureParams(count_scale=0.25))
