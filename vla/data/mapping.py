"""How a dataset's keys become the policy's features (``dataset.features``).

A LeRobot dataset recorded elsewhere names things its own way: LeRobot's PushT and Meta-World
sets call their one camera ``observation.image``, a 14-D bimanual state may hold the arm a
policy wants in its first 7 numbers, and the object poses may sit in a second key. A mapping
says, per policy feature, where its values come from:

    dataset:
      features:
        cameras: {top: observation.image, wrist: null}   # top <- any image or video key; no wrist camera
        state: [observation.state[0:7], observation.environment_state]   # concatenated
        action: action[0:7]                   # a key, or a slice [start:stop] of one

or on the command line: ``dataset.features.cameras.top=observation.image
'dataset.features.action="action[0:7]"'``.

A source is a dataset key, optionally sliced along its last axis with Python's ``[start:stop]``
(either end may be left out). A vector feature may list several sources: they are concatenated
in order, and their statistics with them. A camera takes exactly one image or video key, of any
size (the backbone resizes frames), or null: a camera the policy reads but this dataset lacks,
whose images are zeros and whose tokens are masked out of the prefix (``camera_is_pad``).
Features the mapping does not name are read under their own name, so an empty mapping changes
nothing.

The mapping is applied at the three places a dataset's keys reach training: its metadata
(shapes, names, statistics: `features`, `stats`), which keys and frame offsets lerobot loads
(`source_offsets`), and the loaded values themselves (`apply`, for numpy or torch arrays with
any leading axes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vla.errors import ConfigError, FeatureMismatchError
from vla.features import ACTION, OBS_ENV_STATE, OBS_STATE, PAD_SUFFIX, image_key, is_image_key

_SOURCE = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?\s*$")
IMAGE_DTYPES = ("image", "video")


@dataclass(frozen=True)
class Source:
    """One dataset key, or the slice [start:stop] of its last axis."""

    key: str
    start: int | None = None
    stop: int | None = None

    @property
    def sliced(self) -> bool:
        return self.start is not None or self.stop is not None

    def indices(self, width: int) -> range:
        return range(width)[self.start:self.stop]

    def __str__(self) -> str:
        if not self.sliced:
            return self.key
        return f"{self.key}[{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}]"


def parse_source(text: str, label: str) -> Source:
    """``"observation.state[0:7]"`` -> Source("observation.state", 0, 7); a `ConfigError`
    naming the setting ``label`` when ``text`` is not a key or a key with one slice."""
    match = _SOURCE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{label}: {text!r} is not a dataset key or a slice of one "
                          f"(e.g. observation.state or observation.state[0:7])")
    key, start, stop = match.groups()
    return Source(key, int(start) if start else None, int(stop) if stop else None)


class FeatureMap:
    """The mapping of one dataset: policy feature -> its sources (see the module docstring).

    ``mapping`` is keyed by policy feature (``observation.images.top``, ``action``); ``labels``
    names each feature as the config does (``dataset.features.cameras.top``), for messages.
    """

    def __init__(self, mapping: Mapping[str, str | list[str]] | None = None, labels: Mapping[str, str] | None = None):
        self.labels = {f: (labels or {}).get(f, f"dataset.features[{f!r}]") for f in dict(mapping or {})}
        self.sources: dict[str, list[Source]] = {}
        self.absent: set[str] = set()  # cameras the dataset lacks
        for feature, value in dict(mapping or {}).items():
            if value is None and is_image_key(feature):
                self.absent.add(feature)
                continue
            texts = [value] if isinstance(value, str) else list(value) if value is not None else []
            if not texts:
                raise ConfigError(f"{self.labels[feature]}: names no dataset key")
            sources = [parse_source(t, self.labels[feature]) for t in texts]
            if is_image_key(feature) and (len(sources) > 1 or sources[0].sliced):
                raise ConfigError(f"{self.labels[feature]}: a camera comes from exactly one image or video key, "
                                  f"got {', '.join(map(str, sources))}")
            self.sources[feature] = sources

    @classmethod
    def from_config(cls, cfg, prefix: str = "dataset.features") -> "FeatureMap":
        """From a `FeatureMapConfig` (``dataset.features``), or the same as a dict (a checkpoint's
        record of it): cameras, state, action, environment_state."""
        get = cfg.get if isinstance(cfg, Mapping) else lambda name: getattr(cfg, name)
        mapping, labels = {}, {}
        for camera, key in dict(get("cameras") or {}).items():
            mapping[image_key(camera)], labels[image_key(camera)] = key, f"{prefix}.cameras.{camera}"
        for name, feature in (("state", OBS_STATE), ("action", ACTION), ("environment_state", OBS_ENV_STATE)):
            value = get(name)
            if value is not None:
                mapping[feature], labels[feature] = value, f"{prefix}.{name}"
        return cls(mapping, labels)

    def __bool__(self) -> bool:
        return bool(self.sources or self.absent)

    def sources_of(self, feature: str) -> list[Source]:
        """Where ``feature`` is read from: its mapping, itself, or nowhere (an absent camera)."""
        if feature in self.absent:
            return []
        return self.sources.get(feature, [Source(feature)])

    def source_keys(self, features: list[str]) -> list[str]:
        """The dataset keys that ``features`` (policy names) are read from, each once."""
        return list(dict.fromkeys(s.key for f in features for s in self.sources_of(f)))

    # ----------------------------------------------------------------- metadata
    def check(self, dataset_features: Mapping[str, dict], where: str = "the dataset") -> None:
        """Every source exists in ``dataset_features`` (lerobot's ``meta.features``), a camera's
        is an image or a video, a vector's is 1-D and its slice is not empty. Raises
        `FeatureMismatchError` naming the policy feature and the source."""
        for feature, sources in self.sources.items():
            for source in sources:
                spec = dataset_features.get(source.key)
                if spec is None:
                    raise FeatureMismatchError(
                        f"{self.labels[feature]}: {where} has no key {source.key!r} "
                        f"(it has {sorted(k for k in dataset_features if not _bookkeeping(k))})")
                is_image = spec["dtype"] in IMAGE_DTYPES
                if is_image_key(feature) != is_image:
                    kind = "an image or video" if is_image else f"a {spec['dtype']} vector"
                    raise FeatureMismatchError(f"{self.labels[feature]}: {source.key!r} is {kind}, "
                                               f"not a {'camera' if is_image_key(feature) else 'vector'}")
                if not is_image:
                    shape = tuple(spec["shape"])
                    if len(shape) != 1:
                        raise FeatureMismatchError(f"{self.labels[feature]}: {source.key!r} has shape {shape}; "
                                                   f"only 1-D vectors can be mapped")
                    if not source.indices(shape[0]) or (source.sliced and not _slice_inside(source, shape[0])):
                        raise FeatureMismatchError(f"{self.labels[feature]}: {source} is out of range for "
                                                   f"{source.key!r}, which has {shape[0]} values")

    def features(self, dataset_features: Mapping[str, dict]) -> dict[str, dict]:
        """lerobot's ``meta.features`` as the policy sees them: every mapped feature with its
        dtype, shape and names (sliced and concatenated), beside the dataset's own keys."""
        self.check(dataset_features)
        out = dict(dataset_features)
        for feature, sources in self.sources.items():
            first = dataset_features[sources[0].key]
            if is_image_key(feature):
                out[feature] = first
                continue
            names: list[str] = []
            for source in sources:
                spec = dataset_features[source.key]
                own = _names(spec, source.key)
                names += [own[i] for i in source.indices(spec["shape"][0])]
            out[feature] = {**first, "shape": (len(names),), "names": names}
        return out

    def stats(self, stats: Mapping[str, dict]) -> dict[str, dict]:
        """lerobot's ``meta.stats`` for the mapped features: per-element statistics sliced and
        concatenated like the values (a camera's are its source's)."""
        out = dict(stats)
        for feature, sources in self.sources.items():
            if any(s.key not in stats for s in sources):
                out.pop(feature, None)  # no statistics (a video-only dataset's action): none mapped either
                continue
            if is_image_key(feature):
                out[feature] = stats[sources[0].key]
                continue
            mapped = {}
            for name in stats[sources[0].key]:
                parts = [np.asarray(stats[s.key].get(name)) for s in sources]
                if any(p.ndim != 1 for p in parts):  # a scalar (count): the first source's
                    mapped[name] = parts[0]
                    continue
                mapped[name] = np.concatenate([p[list(s.indices(len(p)))] for p, s in zip(parts, sources)])
            out[feature] = mapped
        return out

    def source_offsets(self, offsets: Mapping[str, list[int]]) -> dict[str, list[int]]:
        """Frame offsets per policy feature -> per dataset key (what lerobot loads)."""
        out: dict[str, list[int]] = {}
        for feature, offs in offsets.items():
            for source in self.sources_of(feature):
                if source.key in out and list(out[source.key]) != list(offs):
                    raise ConfigError(f"dataset.features: {source.key!r} feeds features read at different frame "
                                      f"offsets ({list(out[source.key])} and {list(offs)})")
                out[source.key] = list(offs)
        return out

    # ----------------------------------------------------------------- values
    def apply(self, data: dict) -> dict:
        """Loaded values keyed by dataset key -> keyed by policy feature. Vectors are sliced on
        the last axis and concatenated (numpy or torch, any leading axes); a feature's
        ``<key>_is_pad`` is its sources' flags or-ed. Keys nobody maps pass through."""
        out = dict(data)
        for feature, sources in self.sources.items():
            if any(s.key not in data for s in sources):
                continue
            parts = [data[s.key] if not s.sliced else data[s.key][..., s.start:s.stop] for s in sources]
            out[feature] = parts[0] if len(parts) == 1 else _concat(parts)
            pads = [data[s.key + PAD_SUFFIX] for s in sources if s.key + PAD_SUFFIX in data]
            if pads:
                pad = pads[0]
                for p in pads[1:]:
                    pad = pad | p
                out[feature + PAD_SUFFIX] = pad
        return out


def _concat(parts: list):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=-1)
    import torch

    return torch.cat(parts, dim=-1)


def _slice_inside(source: Source, width: int) -> bool:
    # Python slicing forgives out-of-range ends; a mapping that names values a key lacks is a mistake
    return all(end is None or -width <= end <= width for end in (source.start, source.stop))


def _names(spec: dict, key: str) -> list[str]:
    """A vector feature's per-element names (lerobot's ``names``: a list, or a dict holding one)."""
    names = spec.get("names")
    if isinstance(names, dict):
        names = next(iter(names.values()), None)
    width = spec["shape"][0]
    if isinstance(names, list) and len(names) == width and all(isinstance(n, str) for n in names):
        return names
    return [f"{key}.{i}" for i in range(width)]


def _bookkeeping(key: str) -> bool:
    return key in ("timestamp", "frame_index", "episode_index", "index", "task_index")


def observation_map(trained_on: dict | None, embodiment: str | None = None) -> FeatureMap:
    """The mapping a checkpoint was trained with (its config.json ``data``: one dataset's
    ``features``, or a mixture entry's, by embodiment name), to apply to an env's observations
    so they reach the policy as the dataset's did. No record: the identity."""
    record = trained_on or {}
    if "mixture" in record:
        entry = next((e for e in record["mixture"] if e.get("name") == embodiment), {})
        record, prefix = entry, f"dataset.mixture[{embodiment}].features"
    else:
        prefix = "dataset.features"
    return FeatureMap.from_config(record.get("features") or {}, prefix)
