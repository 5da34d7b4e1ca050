"""Built-in miniature DGSS benchmark: procedurally generated street scenes in the official layouts.

A deterministic, seeded generator (numpy + cv2 drawing) renders small street scenes in perspective
(sky, skyline, buildings, vegetation, terrain, road with markings, sidewalks, walls, fences,
poles with traffic lights/signs/street lights, cars, trucks, buses, trams, people, riders on
bicycles and motorcycles) plus "void" stuff (parking, ego vehicle, rail track, sign backs, static
objects, clutter) that maps to ignore. Every scene is drawn once as an *element map* (the ``E``
enum below); each domain encodes that map in its own official label format and renders the image
in its own appearance style, so the real loaders (``datasets.build_dataset``) read the result
exactly like real data:

=============  ==================================================  =====================================
domain         layout                                              style
=============  ==================================================  =====================================
gta5           gta/images, gta/labels (palette PNG of labelIds),    clean synthetic, saturated flat
               gtav_split_{train,val,test}.txt; 512x282            colours, mild texture, vivid sky
cityscapes     leftImg8bit + gtFine labelIds; 512x256              muted palette, overcast, low camera,
                                                                   ego-vehicle band, slight blur
bdd100k        images/10k + labels/sem_seg/masks (train ids);      wide roads, dashboard (ignore),
               512x288, JPEG                                       noise, ~30 % night-ish
mapillary      {training,validation}/images + labels (v1.2 ids,    per-image random palette, varied
               palette PNG); 4:3, 16:9 and portrait, JPEG          camera, ids where the two 66->19
                                                                   mappings disagree
acdc           rgb_anon + gt per condition (val); rgb_anon only    cityscapes-like + fog/night/rain/snow
               for test (no public GT); 512x288
synthia        RGB + GT/LABELS (16-bit, id in R); 512x304          high random viewpoints, no terrain/
                                                                   truck/train
=============  ==================================================  =====================================

``ensure_miniature()`` generates the benchmark once into a cache folder (atomic rename, safe
against concurrent processes) and returns the data root; ``MINIATURE.json`` marks it.

Package layout: ``elements`` (scene elements and label encodings), ``styles`` (domain styles), ``scene``
(drawing), ``layouts`` (official layouts, the cache folder), ``world`` (the pretraining world).
"""

from __future__ import annotations

from .elements import (ELEMENT_CITYSCAPES_ID, ELEMENT_MAPILLARY_ID, ELEMENT_SYNTHIA_ID, ELEMENT_TRAIN_ID,
                       E)
from .layouts import (MINIATURE_BASE_COUNTS, MINIATURE_DOMAINS, MINIATURE_TEST_COUNTS, MINIATURE_VERSION,
                      MiniatureParams, ensure_miniature, generate_miniature, is_miniature_root, miniature_counts,
                      miniature_root, miniature_test_counts)
from .scene import CONDITIONS, fog, night, rain, render_scene, snow
from .styles import STYLES, DomainStyle

__all__ = [
    "MINIATURE_VERSION",
    "MINIATURE_DOMAINS",
    "MINIATURE_BASE_COUNTS",
    "MiniatureParams",
    "DomainStyle",
    "STYLES",
    "E",
    "ELEMENT_CITYSCAPES_ID",
    "ELEMENT_MAPILLARY_ID",
    "ELEMENT_SYNTHIA_ID",
    "ELEMENT_TRAIN_ID",
    "CONDITIONS",
    "fog",
    "night",
    "rain",
    "snow",
    "render_scene",
    "miniature_root",
    "ensure_miniature",
    "generate_miniature",
    "is_miniature_root",
    "miniature_counts",
    "miniature_test_counts",
    "MINIATURE_TEST_COUNTS",
]
