"""The robosuite scene behind every tabletop task: a Panda, a table, three cubes and a bin.

`TabletopScene` is a robosuite `ManipulationEnv` parameterised by a `TaskSpec`. It owns the
MJCF model, seeded object placement, the success predicates and privileged state. It builds no
policy observation: `envs.tabletop.env.TabletopEnv` renders cameras and reads proprioception
itself, so robosuite's per-substep observable bookkeeping is switched off.
"""

from collections import OrderedDict

from envs.mujoco_render import cpu_render_settings  # isort: skip  (first: sets up headless GL for robosuite)

import numpy as np
import robosuite
from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
from robosuite.models.arenas import TableArena
from robosuite.models.objects import BoxObject
from robosuite.models.objects.composite import Bin
from robosuite.models.tasks import ManipulationTask
from robosuite.utils import RandomizationError
from robosuite.utils.placement_samplers import (
    SequentialCompositeSampler,
    UniformRandomSampler,
)

from envs import stages
from envs.tabletop.tasks import (
    BIN_INNER_HALF,
    BIN_SIZE,
    BIN_WALL,
    CUBE_HALF_SIZE,
    CUBE_RGBA,
    LIFT_HEIGHT,
    TaskSpec,
    cube_name,
    inside_bin,
    rests_on,
)

CONTROL_FREQ = 20  # Hz, the rate of one env step
TABLE_SIZE = (0.8, 0.8, 0.05)
TABLE_TOP = np.array((0.0, 0.0, 0.8))  # centre of the table's top surface (m)
# Objects are placed in this window around the table centre (m): inside the Panda's
# comfortable reach and the agentview camera's field of view.
PLACEMENT_X = (-0.12, 0.12)
PLACEMENT_Y = (-0.22, 0.22)
# Extra gap (m) between the objects' bounding circles, beyond robosuite's no-overlap rule:
# leaves room for the open fingers and the 21 cm long hand of a top grasp.
MIN_GAP = 0.02
MAX_PLACEMENT_TRIES = 100
# Gaussian noise on the initial joint angles (rad): varied starts without odd postures.
JOINT_INIT_NOISE = 0.02
# The bin weighs ~2 kg so that a brush of the arm does not shove it across the table.
BIN_DENSITY = 5000.0
# 4x antialiasing: a cube is a few pixels wide at 96 pixels, and its partly covered edge pixels
# carry where it lies within a pixel. Every demo result in the README rendered this way.
MULTISAMPLES = 4


def min_gap(placements: dict) -> float:
    """Smallest distance (m) between two objects' bounding circles in the table plane."""
    items = list(placements.values())
    return min(
        np.linalg.norm(np.subtract(pos_a[:2], pos_b[:2])) - obj_a.horizontal_radius - obj_b.horizontal_radius
        for i, (pos_a, _, obj_a) in enumerate(items)
        for pos_b, _, obj_b in items[i + 1 :]
    )


class TabletopScene(ManipulationEnv):
    """A Panda (OSC_POSE, delta end-effector pose) in front of a table with the task's objects.

    Args:
        spec: the task; decides the success predicate (the scene is the same for all tasks).
        offscreen: create an offscreen render context (needed for any camera image).
        shadows: let the light cast shadows. Off by default: on Mesa's CPU renderer the
            shadow pass costs several times the rest of the frame.

    Placement and joint noise draw from `self.rng`; `reseed` makes a reset reproducible.
    """

    def __init__(self, spec: TaskSpec, *, offscreen: bool, shadows: bool = False):
        self.task_spec = spec
        self.shadows = shadows
        self.table_offset = TABLE_TOP
        self.cubes: dict[str, BoxObject] = {}
        self.bin: Bin | None = None
        # The Panda's own default: a BASIC composite whose one arm runs OSC_POSE on delta actions
        # in the base frame (the generic BASIC config also names torso, legs, ... and warns).
        controller = robosuite.load_composite_controller_config(robot="Panda")
        super().__init__(
            robots="Panda",
            controller_configs=controller,
            initialization_noise={"magnitude": JOINT_INIT_NOISE, "type": "gaussian"},
            use_camera_obs=False,
            has_renderer=False,
            has_offscreen_renderer=offscreen,
            control_freq=CONTROL_FREQ,
            horizon=spec.max_episode_steps,
            ignore_done=True,  # the gymnasium wrapper owns truncation
            hard_reset=False,  # reset reuses the compiled model and render context
            renderer="mujoco",  # no viewer object at all
        )

    # ----------------------------------------------------------------------- model
    def _load_model(self):
        super()._load_model()
        robot = self.robots[0].robot_model
        robot.set_base_xpos(robot.base_xpos_offset["table"](TABLE_SIZE[0]))
        arena = TableArena(table_full_size=TABLE_SIZE, table_offset=TABLE_TOP)
        arena.set_origin([0, 0, 0])

        self.cubes = {
            colour: BoxObject(name=cube_name(colour), size=[CUBE_HALF_SIZE[colour]] * 3, rgba=CUBE_RGBA[colour])
            for colour in CUBE_RGBA
        }
        self.bin = Bin(
            name="bin",
            bin_size=BIN_SIZE,
            wall_thickness=BIN_WALL,
            transparent_walls=False,
            density=BIN_DENSITY,
        )
        self.placement_initializer = self._placement_sampler()
        self.model = ManipulationTask(
            mujoco_arena=arena,
            mujoco_robots=[robot],
            mujoco_objects=[self.bin, *self.cubes.values()],
        )

    def _placement_sampler(self) -> SequentialCompositeSampler:
        """The bin first (upright, axis-aligned), then the cubes around it with random yaw.

        Both samplers share `self.rng`, so reseeding it in place reseeds the whole scene.
        """
        common = dict(
            x_range=PLACEMENT_X,
            y_range=PLACEMENT_Y,
            ensure_object_boundary_in_range=False,
            ensure_valid_placement=True,  # no two objects overlap
            reference_pos=TABLE_TOP,
            z_offset=0.002,  # drop from 2 mm so nothing starts inside the table
            rng=self.rng,
        )
        sampler = SequentialCompositeSampler(name="tabletop")
        sampler.append_sampler(UniformRandomSampler(name="bin", mujoco_objects=self.bin, rotation=0.0, **common))
        sampler.append_sampler(
            UniformRandomSampler(name="cubes", mujoco_objects=list(self.cubes.values()), rotation=None, **common)
        )
        return sampler

    def _initialize_sim(self, xml_string=None):
        super()._initialize_sim(xml_string)
        cpu_render_settings(self.sim, self.shadows, multisamples=MULTISAMPLES)

    def _setup_references(self):
        super()._setup_references()
        self.body_ids = {name: self.sim.model.body_name2id(obj.root_body) for name, obj in self._objects().items()}

    def _setup_observables(self):
        # Observations come from TabletopEnv; robosuite observables would only cost time.
        return OrderedDict()

    def _reset_internal(self):
        super()._reset_internal()
        for pos, quat, obj in self._sample_placements().values():
            self.sim.data.set_joint_qpos(obj.joints[0], np.concatenate([pos, quat]))

    def _sample_placements(self) -> dict:
        """Object name -> (pos, quat wxyz, object), resampled until every pair keeps MIN_GAP."""
        for _ in range(MAX_PLACEMENT_TRIES):
            placements = self.placement_initializer.sample()
            if min_gap(placements) >= MIN_GAP:
                return placements
        raise RandomizationError(f"no placement with {MIN_GAP} m between objects in {MAX_PLACEMENT_TRIES} tries")

    def _objects(self) -> dict:
        return {**{cube_name(c): cube for c, cube in self.cubes.items()}, "bin": self.bin}

    # ----------------------------------------------------------------------- seeding
    def reseed(self, seed: int | None) -> None:
        """Reseed placement and joint noise in place (the samplers hold the same generator)."""
        self.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state

    # ----------------------------------------------------------------------- state
    def eef_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """End-effector (grip site) position (3,) and rotation matrix (3, 3), world frame."""
        site = self.robots[0].eef_site_id["right"]
        return self.sim.data.site_xpos[site].copy(), self.sim.data.site_xmat[site].reshape(3, 3).copy()

    def gripper_qpos(self) -> np.ndarray:
        """The two finger joint positions (2,) in m; about +-0.04 fully open, 0 closed."""
        return self.sim.data.qpos[self.robots[0]._ref_gripper_joint_pos_indexes["right"]].copy()

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Position (3,) and rotation matrix (3, 3) of object `name` (``red_cube``, ``bin``, ...)."""
        body = self.body_ids[name]
        return self.sim.data.body_xpos[body].copy(), self.sim.data.body_xmat[body].reshape(3, 3).copy()

    def is_grasped(self, name: str) -> bool:
        """Both finger pads touch object `name`."""
        return self._check_grasp(gripper=self.robots[0].gripper, object_geoms=self._objects()[name])

    def set_object_pose(self, name: str, pos, quat_wxyz=(1.0, 0.0, 0.0, 0.0)) -> None:
        """Teleport object `name` to `pos` (3,) with orientation (w, x, y, z), at rest."""
        self.sim.data.set_joint_qpos(self._objects()[name].joints[0], np.concatenate([pos, quat_wxyz]))
        self.sim.data.set_joint_qvel(self._objects()[name].joints[0], np.zeros(6))
        self.sim.forward()

    # ----------------------------------------------------------------------- success
    def reward(self, action=None) -> float:
        """Sparse: 1.0 when the task's success predicate holds, else 0.0."""
        return float(self.check_success())

    def check_success(self) -> bool:
        """The predicate stated in `self.task_spec.success`."""
        if self.task_spec.kind == "lift":
            return self._lifted(self.task_spec.pick)
        if self.task_spec.kind == "stack":
            return self._stacked(self.task_spec.pick, self.task_spec.target)
        return self._in_bin(self.task_spec.pick)

    def stages(self) -> dict[str, bool]:
        """The task's stages on the current state, in the order an expert reaches them:
        ``grasped`` (both pads on the pick cube), ``lifted`` (its bottom face >= 2 cm above the
        table), for stack / place ``over_target`` (its centre over the green cube's top face /
        inside the bin's walls, above it), and ``success``. An evaluation reports how many
        episodes ever reached each one: where a policy fails, not only whether."""
        colour, target = self.task_spec.pick, self.task_spec.target
        out = {"grasped": self.is_grasped(cube_name(colour)), "lifted": self._lifted(colour, stages.LIFT_HEIGHT)}
        if target is not None:  # over the green cube's top face, or inside the bin's walls
            below = "bin" if target == "bin" else cube_name(target)
            half_xy = BIN_INNER_HALF if target == "bin" else CUBE_HALF_SIZE[target]
            out["over_target"] = stages.over(self.object_pose(cube_name(colour))[0], *self.object_pose(below), half_xy)
        out["success"] = self.check_success()
        return out

    def _lifted(self, colour: str, height: float = LIFT_HEIGHT) -> bool:
        pos, _ = self.object_pose(cube_name(colour))
        return bool(pos[2] - CUBE_HALF_SIZE[colour] - TABLE_TOP[2] > height)

    def _stacked(self, top: str, bottom: str) -> bool:
        top_pos, _ = self.object_pose(cube_name(top))
        bottom_pos, bottom_rot = self.object_pose(cube_name(bottom))
        touching = self.check_contact(self.cubes[top], self.cubes[bottom])
        return bool(rests_on(top_pos, bottom_pos, bottom_rot, top, bottom) and touching
                    and not self.is_grasped(cube_name(top)))

    def _in_bin(self, colour: str) -> bool:
        cube_pos, _ = self.object_pose(cube_name(colour))
        bin_pos, bin_rot = self.object_pose("bin")
        return bool(inside_bin(cube_pos, bin_pos, bin_rot) and not self.is_grasped(cube_name(colour)))
