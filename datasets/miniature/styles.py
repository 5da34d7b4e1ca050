"""Domain styles of the miniature benchmark: appearance and layout statistics per domain."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DomainStyle:
    """Appearance and layout statistics of one domain (ranges are sampled per image).

    ``materials``: every domain but the synthetic source paints each element with its own colours, a fixed
    RGB offset per element (std ``materials``, drawn once from ``materials_seed``) that is the same in every
    image of the domain. A global colour jitter (the photometric augmentation every recipe uses) cannot undo
    it: what changes from GTA5 to a real camera is how each material looks, not one colour matrix. Features
    learnt from many looks (the pretraining world draws a free palette per scene) carry over; a head that
    learnt the source's colours does not.
    """

    sizes: tuple[tuple[int, int], ...]          # (w, h) choices
    size_probs: tuple[float, ...] = ()
    saturation: tuple[float, float] = (1.0, 1.0)
    hue_shift: tuple[float, float] = (0.0, 0.0)  # degrees
    brightness: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    palette_jitter: float = 0.0                  # per-image per-element colour offset std
    materials: float = 0.0                       # std of the domain's own material colours (see below)
    materials_seed: int = 0
    instance_jitter: float = 8.0                 # per-instance colour offset std
    texture: float = 1.0
    blur: float = 0.0
    sensor_noise: float = 0.0
    focal: tuple[float, float] = (0.75, 0.95)    # focal length / image width
    horizon: tuple[float, float] = (0.42, 0.5)   # horizon row / image height
    cam_height: tuple[float, float] = (1.3, 1.6)  # metres
    vp_jitter: float = 0.06
    road_width: tuple[float, float] = (7.0, 11.0)
    sky: tuple[str, ...] = ("clear",)            # choices: clear, overcast, sunset
    hood: str = "none"                           # none | ego | dashboard
    night_prob: float = 0.0
    cars: tuple[int, int] = (2, 6)
    building_prob: float = 0.55
    no_terrain_truck_train: bool = False
    jpeg_quality: int | None = None


MATERIALS_STD = 36.0
"""How far (RGB std per element) a domain's materials are from GTA5's; ACDC shares Cityscapes' (the same kind of
European street, another camera: its shift is the weather)."""

STYLES: dict[str, DomainStyle] = {
    "gta5": DomainStyle(
        sizes=((512, 282),), saturation=(1.35, 1.55), hue_shift=(-6, 6), brightness=(1.0, 1.12),
        contrast=(1.05, 1.2), instance_jitter=10.0, texture=0.55, horizon=(0.45, 0.52), cam_height=(1.4, 1.8),
        road_width=(7.0, 12.0), sky=("clear", "clear", "sunset"), cars=(2, 6),
    ),
    "cityscapes": DomainStyle(
        materials=MATERIALS_STD, materials_seed=1,
        sizes=((512, 256),), saturation=(0.5, 0.68), hue_shift=(-4, 4), brightness=(0.82, 0.95),
        contrast=(0.85, 0.95), tint=(0.97, 1.02, 0.99), instance_jitter=6.0, texture=1.0, blur=0.7,
        sensor_noise=2.0, focal=(0.9, 1.1), horizon=(0.36, 0.43), cam_height=(1.15, 1.3), road_width=(6.0, 9.0),
        sky=("overcast", "overcast", "clear"), hood="ego", cars=(3, 7), building_prob=0.7,
    ),
    "bdd100k": DomainStyle(
        materials=MATERIALS_STD, materials_seed=2,
        sizes=((512, 288),), saturation=(0.7, 0.95), hue_shift=(-8, 8), brightness=(0.85, 1.05),
        contrast=(0.9, 1.05), tint=(0.97, 1.0, 1.05), instance_jitter=8.0, texture=1.2, blur=0.5,
        sensor_noise=5.0, focal=(0.7, 0.85), horizon=(0.42, 0.52), cam_height=(1.3, 1.5), road_width=(11.0, 18.0),
        sky=("clear", "overcast"), hood="dashboard", night_prob=0.3, cars=(4, 9), building_prob=0.45,
        jpeg_quality=70,
    ),
    "mapillary": DomainStyle(
        materials=MATERIALS_STD, materials_seed=3,
        sizes=((512, 384), (288, 384), (512, 288)), size_probs=(0.7, 0.15, 0.15), saturation=(0.6, 1.3),
        hue_shift=(-20, 20), brightness=(0.75, 1.2), contrast=(0.85, 1.15), palette_jitter=14.0,
        instance_jitter=10.0, texture=1.0, blur=0.3, sensor_noise=3.0, focal=(0.6, 1.0), horizon=(0.32, 0.58),
        cam_height=(1.0, 2.6), vp_jitter=0.12, road_width=(5.0, 12.0), sky=("clear", "overcast", "sunset"),
        cars=(2, 6), jpeg_quality=85,
    ),
    "acdc": DomainStyle(
        materials=MATERIALS_STD, materials_seed=1,
        sizes=((512, 288),), saturation=(0.55, 0.75), hue_shift=(-4, 4), brightness=(0.85, 0.95),
        contrast=(0.85, 0.95), instance_jitter=6.0, texture=1.0, blur=0.6, sensor_noise=2.5, focal=(0.75, 0.9),
        horizon=(0.4, 0.48), cam_height=(1.2, 1.4), road_width=(6.0, 9.0), sky=("overcast",), cars=(2, 6),
        building_prob=0.6,
    ),
    "synthia": DomainStyle(
        materials=MATERIALS_STD, materials_seed=5,
        sizes=((512, 304),), saturation=(1.05, 1.2), hue_shift=(-10, 10), brightness=(0.95, 1.1),
        contrast=(1.0, 1.1), instance_jitter=12.0, texture=0.4, focal=(0.6, 0.8), horizon=(0.2, 0.5),
        cam_height=(2.0, 7.0), vp_jitter=0.1, road_width=(8.0, 14.0), sky=("clear",), cars=(3, 8),
        no_terrain_truck_train=True,
    ),
}

_SKIES = {
    "clear": ((70, 120, 200), (175, 205, 238)),
    "overcast": ((185, 190, 198), (228, 230, 232)),
    "sunset": ((80, 100, 165), (240, 175, 125)),
    "night": ((6, 8, 22), (30, 30, 48)),
}
