"""Any registered gymnasium env in vla's observation convention, from a small mapping (``env.family=gym``).

    from envs.gym_adapter import make_env

    env = make_env("gym_pusht/PushT-v0", {"images": {"top": "pixels"}, "state": ["agent_pos"]},
                   cameras=("top",), instruction="push the T-shaped block onto the T-shaped target",
                   obs_type="pixels_agent_pos")
    obs, info = env.reset(seed=0)   # obs: observation.images.top, observation.state, task

One observation (no batch axis), as `envs.tabletop.env` documents the convention:

    observation.images.<camera>    uint8   (H, W, 3)   one per camera, from ``mapping.images[camera]``
    observation.state              float32 (D_s,)      the flattened ``mapping.state`` parts, concatenated
    observation.environment_state  float32 (D_e,)      the same for ``mapping.env_state`` (only when given)
    task                           str                 ``instruction`` (gym envs have no language)

Actions pass through unchanged, in the env's own units (the policy learns them; its
normalizer maps them to and from its own range); only their shape is checked. The reward,
termination and truncation are the env's; ``info`` gains ``is_success`` (bool) on every
reset and step, read from ``info[mapping.success]`` if the env reports that key, else
``reward >= mapping.success_reward`` (the step's reward, not a running maximum), else the
first step raises an error that says which to set. An episode's success is its last step's.

**Paths.** A path names a part of the env's observation:

    agent_pos          a key of a Dict observation (``a/b`` for nested Dicts)
    [0:2]              numpy indexing of a Box observation: ``[3]``, ``[0:2]``, ``[-2:]``, ``[::2]``,
                       ``[0, 1:3]`` (int or slice per axis)
    agent_pos[0:2]     both
    render             ``env.render()`` (images only; ``render_mode`` defaults to ``rgb_array``)

Paths are resolved against ``observation_space`` when the wrapper is made, so a bad one fails
at once, naming the path and what is available. State parts may be any Box (or Discrete /
MultiDiscrete / MultiBinary) part; they are flattened. Images must resolve to a Box of shape
(H, W, 3) or (3, H, W) (channels-first is transposed; a shape like (3, H, 3) counts as
channels-last); uint8 images are used as they are, float images only when the Box is bounded
in [0, 1] (scaled to 0..255); anything else (grayscale, unbounded floats, other integer
types) is refused with the reason. ``render`` must return (H, W, 3) uint8 (gymnasium's
rgb_array convention); its size is found by one ``reset()`` + ``render()`` when the wrapper is
made (as gymnasium's ``AddRenderObservation`` does), so the episode seeds that follow are
unaffected. Images are not resized: an env's image size is its own (``env.image_size`` can
reach it through the env's kwargs, as ``configs/env/pusht.yaml`` does).

**Env ids.** ``gymnasium.make(env_id, max_episode_steps=..., **kwargs)``. An id that is not
registered yet but has a namespace (``gym_pusht/PushT-v0``) imports the namespace as a module
first (gym-pusht registers its env on ``import gym_pusht``); gymnasium's ``module:Id`` form
(``my_pkg.envs:MyEnv-v0``) imports ``module``. ``max_episode_steps=None`` keeps the id's
registered limit (an env without one is warned about: its episodes end only when it says so).

**LeRobot's pusht dataset** (``lerobot/pusht``) names its one image ``observation.image``
(singular: LeRobot's name for a single-camera observation, which its env wrappers map from
gym-pusht's ``pixels``); its ``observation.state`` is ``agent_pos`` (2,) and its ``action`` the
(2,) target position, as here. vla reads images only as ``observation.images.<camera>``, so
``configs/env/pusht.yaml`` calls the camera ``top`` (``observation.images.top``); to train on
the hub dataset its image feature must be renamed to ``observation.images.top`` first (lerobot
0.6.1's dataset tools have no rename), or record your own with ``vla collect env=pusht``.

`wrap(env, mapping, ...)` does the same for an env made some other way (e.g. with wrappers of
your own around it).

Errors are `GymAdapterError` (a ValueError) with a one-line message that names the culprit
by its config name (``env.id``, ``env.cameras``, ``env.gym.state[0]``, ...). This module
imports nothing of ``vla``: ``mapping`` is any object with `GymMapping`'s attributes (vla's
config dataclass), or a dict with those keys.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import re
import string
import warnings
from collections.abc import Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vla.errors import EnvError

logger = logging.getLogger(__name__)

# vla.features' names, spelt out here because envs/ never imports vla.
OBS_IMAGES = "observation.images."
OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"
TASK = "task"
SUCCESS = "is_success"
MAX_INSTRUCTION_LENGTH = 128  # as TabletopEnv's Text space (longer instructions widen it)
RENDER = "render"

MAPPING_FIELDS = {"state": [], "images": {}, "env_state": [], "success": SUCCESS, "success_reward": None}
NUMERIC_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
_PATH = re.compile(r"^(?P<keys>[^\[\]]*)(?:\[(?P<index>[^\[\]]*)\])?$")
_INT = r"\s*-?\d+\s*"
_SLICE = re.compile(rf"^({_INT})?:({_INT})?(:({_INT})?)?$")


class GymAdapterError(EnvError):
    """A bad env id, mapping or action; the message is one line naming the culprit."""


def make_env(env_id: str, mapping, *, cameras: tuple[str, ...] | list[str] = (), instruction: str | None = None,
             max_episode_steps: int | None = None, **kwargs) -> GymAdapter:
    """``gymnasium.make(env_id, ...)`` wrapped into vla's convention (see the module docstring).

    Args:
        env_id: a registered id (``CartPole-v1``), a namespaced one whose namespace is an
            importable module (``gym_pusht/PushT-v0``), or ``module:Id``.
        mapping: `GymMapping`-like (``state``, ``images``, ``env_state``, ``success``,
            ``success_reward``), as an object or a dict.
        cameras: camera names; each needs an entry in ``mapping.images`` and vice versa.
        instruction: the ``task`` string of every observation (required).
        max_episode_steps: truncate after this many steps; None keeps the id's registered limit.
        **kwargs: keyword arguments for ``gymnasium.make`` (the env's own, ``render_mode``, ...).
    """
    if not isinstance(env_id, str) or not env_id:
        raise GymAdapterError(f"env.id must name a registered gymnasium env (e.g. gym_pusht/PushT-v0), got {env_id!r}")
    m = _checked_mapping(mapping, cameras, instruction, env_id)
    kwargs = dict(kwargs)
    if RENDER in m["images"].values():
        kwargs.setdefault("render_mode", "rgb_array")
    env = _make(env_id, max_episode_steps, kwargs)
    try:
        return GymAdapter(env, m, cameras=list(cameras), instruction=instruction)
    except BaseException:
        env.close()
        raise


def wrap(env: gym.Env, mapping, *, cameras: tuple[str, ...] | list[str] = (),
         instruction: str | None = None) -> GymAdapter:
    """`make_env` for an env made some other way (your own wrappers around it): same mapping, same checks."""
    name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    m = _checked_mapping(mapping, cameras, instruction, name)
    if RENDER in m["images"].values() and env.render_mode != "rgb_array":
        raise GymAdapterError(f"env.gym.images uses 'render', which needs the env made with render_mode='rgb_array' "
                              f"(it has {env.render_mode!r})")
    return GymAdapter(env, m, cameras=list(cameras), instruction=instruction)


def _checked_mapping(mapping, cameras, instruction, env_name: str) -> dict:
    """The mapping as a plain dict, checked against the cameras; the instruction checked too."""
    m = _mapping(mapping)
    if not instruction or not isinstance(instruction, str):
        raise GymAdapterError(f"env.instruction is required for env.family=gym ({env_name} has no language): "
                              f"set it to what the policy should be told, e.g. env.instruction='push the block'")
    cameras = list(cameras)
    for camera in cameras:
        if camera not in m["images"]:
            raise GymAdapterError(f"camera {camera!r} of env.cameras has no image in env.gym.images "
                                  f"(it maps {sorted(m['images'])}): add env.gym.images.{camera}=<path>")
    for camera in m["images"]:
        if camera not in cameras:
            raise GymAdapterError(f"env.gym.images names camera {camera!r}, which env.cameras {cameras} lacks: "
                                  f"add it to env.cameras or remove it from env.gym.images")
    if not m["state"]:
        raise GymAdapterError(f"env.gym.state is empty: name the parts of {env_name}'s observation that form "
                              f"observation.state, e.g. env.gym.state=[agent_pos] or env.gym.state=['[0:4]']")
    return m


class GymAdapter(gym.Wrapper):
    """A gymnasium env whose observations follow vla's convention; made by `make_env` or `wrap`."""

    def __init__(self, env: gym.Env, mapping: dict, *, cameras: list[str], instruction: str):
        super().__init__(env)
        self.env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        self.instruction = instruction
        self.success_key = mapping["success"]
        self.success_reward = mapping["success_reward"]
        space = env.observation_space
        self._state = [_Part(f"env.gym.state[{i}]", p, space) for i, p in enumerate(mapping["state"])]
        self._env_state = [_Part(f"env.gym.env_state[{i}]", p, space) for i, p in enumerate(mapping["env_state"])]
        for part in self._state + self._env_state:
            part.check_numeric()
        self._images = {c: _Part(f"env.gym.images.{c}", mapping["images"][c], space) for c in cameras}
        image_spaces = {c: part.image_space(env) for c, part in self._images.items()}

        charset = string.printable + "".join(sorted(set(instruction) - set(string.printable)))
        obs_spaces = {OBS_IMAGES + c: s for c, s in image_spaces.items()}
        obs_spaces[OBS_STATE] = _vector_space(sum(p.size for p in self._state))
        if self._env_state:
            obs_spaces[OBS_ENV_STATE] = _vector_space(sum(p.size for p in self._env_state))
        obs_spaces[TASK] = spaces.Text(max_length=max(MAX_INSTRUCTION_LENGTH, len(instruction)), charset=charset)
        self.observation_space = spaces.Dict(obs_spaces)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        info = dict(info)
        info[SUCCESS] = bool(info[self.success_key]) if self.success_key in info else False
        return self._observation(obs), info

    def step(self, action) -> tuple[dict, float, bool, bool, dict]:
        self._check_action(action)
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        if self.success_key in info:
            info[SUCCESS] = bool(info[self.success_key])
        elif self.success_reward is not None:
            info[SUCCESS] = bool(float(reward) >= self.success_reward)
        else:
            raise GymAdapterError(
                f"{self.env_id} reports no info[{self.success_key!r}] (its info keys: {sorted(info)}): set "
                f"env.gym.success to the info key that says an episode succeeded, or env.gym.success_reward "
                f"to the reward at which a step counts as a success")
        return self._observation(obs), reward, terminated, truncated, info

    def _check_action(self, action) -> None:
        expected = self.action_space.shape
        if expected is None:
            return
        got = np.shape(action)
        if tuple(got) != tuple(expected):
            raise GymAdapterError(f"action of shape {tuple(got)} for {self.env_id}, which expects shape "
                                  f"{tuple(expected)} (action_space {self.action_space})")

    def _observation(self, raw) -> dict:
        obs = {OBS_IMAGES + c: part.image(raw, self.env) for c, part in self._images.items()}
        obs[OBS_STATE] = _concat(self._state, raw)
        if self._env_state:
            obs[OBS_ENV_STATE] = _concat(self._env_state, raw)
        obs[TASK] = self.instruction
        return obs


def _vector_space(size: int) -> spaces.Box:
    return spaces.Box(-np.inf, np.inf, (size,), np.float32)


def _concat(parts: list[_Part], raw) -> np.ndarray:
    return np.concatenate([np.asarray(p.get(raw), dtype=np.float64).reshape(-1) for p in parts]).astype(np.float32)


class _Part:
    """One path, resolved against an observation space: which keys, which index, what results."""

    def __init__(self, where: str, path, space: spaces.Space):
        self.where, self.path = where, path
        if not isinstance(path, str):
            raise GymAdapterError(f"{where}: a path must be a string like 'agent_pos' or '[0:2]', got {path!r}")
        self.render = path.strip() == RENDER
        if self.render:
            self.keys, self.index, self.space, self.shape = [], None, None, None
            return
        match = _PATH.match(path.strip())
        if match is None:
            raise GymAdapterError(f"{where} {path!r}: not a path; write a key (agent_pos), a nested key (a/b), "
                                  f"an index ([0:2]), both (agent_pos[0:2]) or render")
        self.keys = [k.strip() for k in match["keys"].split("/")] if match["keys"].strip() else []
        if any(not k for k in self.keys):
            raise GymAdapterError(f"{where} {path!r}: empty key between '/'")
        self.index = None if match["index"] is None else _parse_index(where, path, match["index"])
        self.space = self._resolve(space)
        if not isinstance(self.space, NUMERIC_SPACES):
            raise GymAdapterError(f"{where} {path!r} is a {type(self.space).__name__} space ({self.space}), "
                                  f"not an array: name a part inside it")
        self.shape = tuple(self.space.shape)
        if self.index is not None:
            try:
                self.shape = _dummy(self.space)[self.index].shape
            except IndexError as e:
                raise GymAdapterError(f"{where} {path!r}: index [{match['index']}] does not fit shape "
                                      f"{tuple(self.space.shape)} ({e})") from None
            for axis, item in enumerate(self.index):  # numpy clips slices silently; a typo should not pass
                n = self.space.shape[axis]
                if isinstance(item, slice) and any(b is not None and not -n <= b <= n for b in (item.start, item.stop)):
                    raise GymAdapterError(f"{where} {path!r}: slice [{match['index']}] runs past axis {axis} "
                                          f"of size {n} (shape {tuple(self.space.shape)})")
        self.size = math.prod(self.shape)

    def _resolve(self, space: spaces.Space) -> spaces.Space:
        walked = []
        for key in self.keys:
            if not isinstance(space, spaces.Dict):
                at = f"'{'/'.join(walked)}'" if walked else "the observation"
                raise GymAdapterError(f"{self.where} {self.path!r}: {at} is a {type(space).__name__} "
                                      f"{_describe(space)}, it has no key {key!r}"
                                      + ("; index it instead, e.g. [0:2]" if isinstance(space, NUMERIC_SPACES) else ""))
            if key not in space.spaces:
                at = f" '{'/'.join(walked)}'" if walked else ""
                raise GymAdapterError(f"{self.where} {self.path!r}: no key {key!r} in the observation{at}; "
                                      f"available keys: {list(space.spaces)}")
            walked.append(key)
            space = space.spaces[key]
        if isinstance(space, spaces.Dict) and self.index is not None:
            first = next(iter(space.spaces), "key")
            raise GymAdapterError(f"{self.where} {self.path!r}: an index needs an array, but this is a Dict "
                                  f"with keys {list(space.spaces)}: name a key first, e.g. {first}[0:2]")
        return space

    def check_numeric(self) -> None:
        if self.render:
            raise GymAdapterError(f"{self.where} 'render': render is for images (env.gym.images), not vectors")
        if self.size == 0:
            raise GymAdapterError(f"{self.where} {self.path!r} selects nothing (shape {self.shape})")

    def image_space(self, env: gym.Env) -> spaces.Box:
        """The (H, W, 3) uint8 Box this image path yields; also decides the conversion."""
        self.transpose = self.scale = False
        if self.render:
            if env.render_mode != "rgb_array":
                raise GymAdapterError(f"{self.where} 'render' needs render_mode='rgb_array', but the env has "
                                      f"render_mode={env.render_mode!r} (env.kwargs.render_mode)")
            env.reset()
            frame = env.render()
            if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3
                    and frame.shape[2] == 3):
                got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
                raise GymAdapterError(f"{self.where} 'render': env.render() must return a (H, W, 3) uint8 "
                                      f"array, got {got}")
            self.shape = frame.shape
            return spaces.Box(0, 255, frame.shape, np.uint8)
        what = f"{self.where} {self.path!r} is {_describe(self.space)}" + (
            f" indexed to {self.shape}" if self.index is not None else "")
        if not isinstance(self.space, spaces.Box):
            raise GymAdapterError(f"{what}, not an image (a Box of shape (H, W, 3))")
        if len(self.shape) != 3 or 3 not in (self.shape[0], self.shape[2]):
            raise GymAdapterError(f"{what}, not an image: expected shape (H, W, 3) or (3, H, W)")
        self.transpose = self.shape[2] != 3
        dtype = self.space.dtype
        if np.issubdtype(dtype, np.floating):
            low, high = _dummy_bounds(self.space, self.index)
            if not (np.isfinite(low).all() and np.isfinite(high).all() and low.min() >= 0 and high.max() <= 1):
                raise GymAdapterError(f"{what}, a float image not bounded in [0, 1]: only uint8 images or float "
                                      f"images in [0, 1] are accepted")
            self.scale = True
        elif dtype != np.uint8:
            raise GymAdapterError(f"{what}, not an image: expected uint8 (or float in [0, 1]) pixels")
        h, w = (self.shape[1], self.shape[2]) if self.transpose else (self.shape[0], self.shape[1])
        return spaces.Box(0, 255, (h, w, 3), np.uint8)

    def get(self, raw):
        for key in self.keys:
            raw = raw[key]
        return raw if self.index is None else np.asarray(raw)[self.index]

    def image(self, raw, env: gym.Env) -> np.ndarray:
        if self.render:
            frame = env.render()
            if not isinstance(frame, np.ndarray) or frame.shape != self.shape:
                got = frame.shape if isinstance(frame, np.ndarray) else type(frame).__name__
                raise GymAdapterError(f"{self.where} 'render': env.render() returned {got}, "
                                      f"not the {self.shape} it returned at first")
            return frame
        x = np.asarray(self.get(raw))
        if self.transpose:
            x = x.transpose(1, 2, 0)
        if self.scale:
            x = np.clip(np.rint(x * 255.0), 0, 255)
        return np.ascontiguousarray(x, dtype=np.uint8)


def _parse_index(where: str, path: str, text: str) -> tuple:
    items = []
    for item in text.split(","):
        item = item.strip()
        if re.fullmatch(_INT, item):
            items.append(int(item))
            continue
        m = _SLICE.match(item)
        if not m:
            raise GymAdapterError(f"{where} {path!r}: bad index [{text}]; use ints and slices like [3], [0:2], "
                                  f"[-2:], [::2], [0, 1:3]")
        start, stop, step = (int(g) if g is not None and g.strip() else None for g in (m[1], m[2], m[4]))
        if step == 0:
            raise GymAdapterError(f"{where} {path!r}: slice step cannot be zero")
        items.append(slice(start, stop, step))
    return tuple(items)


def _dummy(space: spaces.Space) -> np.ndarray:
    """A zero-memory array of the space's shape, to index-check paths against."""
    return np.broadcast_to(np.zeros((), dtype=space.dtype or np.float64), space.shape)


def _dummy_bounds(space: spaces.Box, index) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.asarray(space.low), np.asarray(space.high)
    return (low, high) if index is None else (low[index], high[index])


def _describe(space: spaces.Space) -> str:
    if isinstance(space, spaces.Dict):
        return f"(keys {list(space.spaces)})"
    shape = getattr(space, "shape", None)
    dtype = getattr(space, "dtype", None)
    return f"{tuple(shape)} {dtype}" if shape is not None else str(space)


def _mapping(mapping) -> dict:
    """A GymMapping-like object or dict -> a plain dict with every field, types checked."""
    if mapping is None:
        mapping = {}
    if isinstance(mapping, Mapping):
        unknown = sorted(set(mapping) - set(MAPPING_FIELDS))
        if unknown:
            raise GymAdapterError(f"unknown env.gym keys {unknown}; valid keys: {list(MAPPING_FIELDS)}")
        get = lambda name: mapping.get(name, MAPPING_FIELDS[name])  # noqa: E731
    else:
        get = lambda name: getattr(mapping, name, MAPPING_FIELDS[name])  # noqa: E731
    m = {name: get(name) for name in MAPPING_FIELDS}
    for name in ("state", "env_state"):
        value = m[name]
        m[name] = [value] if isinstance(value, str) else list(value or [])
    if not isinstance(m["images"], Mapping):
        raise GymAdapterError(f"env.gym.images must map camera names to paths, got {m['images']!r}")
    m["images"] = {str(k): v for k, v in m["images"].items()}
    if not isinstance(m["success"], str):
        raise GymAdapterError(f"env.gym.success must be an info key (a string), got {m['success']!r}")
    if m["success_reward"] is not None:
        m["success_reward"] = float(m["success_reward"])
    return m


def _make(env_id: str, max_episode_steps: int | None, kwargs: dict) -> gym.Env:
    """``gymnasium.make``, importing the module that registers ``env_id`` when needed."""
    module, name = env_id.split(":", 1) if ":" in env_id else (None, env_id)
    if module is None and name not in gym.registry:
        namespace = gym.envs.registration.parse_env_id(name)[0]
        module = namespace
    if module:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # gym-pusht imports pygame, which greets on stdout
        try:
            with _quiet_imports():
                importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and module.split(".")[0] == e.name.split(".")[0]:
                raise GymAdapterError(f"unknown gymnasium env {env_id!r}: no module {module!r} to register it; "
                                      f"install the package that provides it, or write the id as module:Id "
                                      f"(e.g. ale_py:ALE/Pong-v5)") from None
            raise GymAdapterError(f"importing {module!r} to register {env_id!r} failed: {e}") from None
    try:
        gym.spec(name)
    except gym.error.UnregisteredEnv as e:
        reason = " ".join(str(e).split())
        raise GymAdapterError(f"unknown gymnasium env {env_id!r} ({reason}): install the package that registers "
                              f"it and name its module, as in module:Id (e.g. ale_py:ALE/Pong-v5)") from None
    try:
        with _quiet_imports():  # the entry point's module loads here
            env = gym.make(name, max_episode_steps=max_episode_steps, **kwargs)
    except TypeError as e:
        raise GymAdapterError(f"gymnasium.make({name!r}, **{kwargs}) failed: {e} (check env.kwargs)") from e
    if env.spec is not None and env.spec.max_episode_steps is None:
        logger.warning("%s has no time limit: its episodes end only when it terminates them "
                       "(set env.max_episode_steps)", env_id)
    return env


@contextlib.contextmanager
def _quiet_imports():
    """pygame (which gym-pusht imports) warns about setuptools' pkg_resources on import: not ours to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "pkg_resources is deprecated")
        yield
