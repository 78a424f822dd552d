"""Scripted experts from privileged state: waypoints, P-control to them, pick-and-carry phases.

Shared by every simulated task family (`envs.tabletop`, `envs.robosuite_tasks`). An env that
an expert drives provides ``privileged_state()`` -> {``eef_pos`` (3,), ``eef_rot`` (3, 3),
``gripper_qpos``, ``table_height`` (float), ``objects``: name -> {``pos`` (3,), ``rot`` (3, 3),
``half_size`` (3,): half extents of the object's bounding box in its own frame}}, world frame, m.

An expert is a list of phases. Each phase names a sub-task in plain language ("grasp the red
cube"), a target end-effector position and yaw computed from the simulator state, a gripper
command, and a test that ends it (target reached, or a number of steps waited). `act` turns
the error to the target into an OSC_POSE delta action, so motions are straight lines that
slow down smoothly near each waypoint; the gripper always points straight down.

A pick recovers from a failed grasp: fingers that close during the descent either caught the
object (the grasp goes on) or not, and a lift with nothing in hand is a miss; a miss sends
the expert back to hover above the object, fingers opening, for another try. ``mistakes`` > 0
makes the expert *execute* a grasp in the wrong place in that fraction of episodes while
still *recording* its correct actions (the `execute` hook of `vla.data.collect`), so a
dataset shows how to come back from the errors a cloned policy makes near the object, as
DART noise shows it for small drifts.

Carrying and placing recover too: an object lost on the way (fingers no longer holding it)
sends the expert back to pick it up from wherever it fell, and so does an object that does
not end up placed (a task's ``placed`` test) once the fingers have let go. ``place_mistakes``
> 0 makes the expert *execute* a release 3-4.5 cm beside the place target in that fraction of
episodes: the object falls off, and the record shows it picked up again and placed.
``align_mistakes`` > 0 makes it *execute* a descent that ends 1.5-3 cm beside the place target
and 0.5-3 cm above it, still holding: the state a cloned policy stalls in when it stacks (it
corrects ~1 mm per step because the expert is never seen there), followed by the expert's own
sideways correction at that height and its release.
"""

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np
from scipy.spatial.transform import Rotation


OPEN, CLOSE = -1.0, 1.0
# OSC_POSE scales an action of 1 to 5 cm / 0.5 rad of set-point offset per step.
POS_SCALE, ROT_SCALE = 0.05, 0.5
MAX_POS_ACTION = 0.8  # caps the speed at ~2 cm per step (0.4 m/s)
MAX_ROT_ACTION = 1.0  # ~0.1 rad per step: a quarter turn of the wrist takes ~15 steps
# Largest change of the arm's action from one step to the next: speeds ramp up over ~4 steps
# instead of jumping when a phase starts, so demonstrations have no velocity steps.
MAX_ACTION_CHANGE = 0.2
YAW_TOLERANCE = 0.05  # rad; a phase that sets the yaw also waits for it
GRASP_XY_TOLERANCE = 0.015  # m; see pick_phases
HOVER = 0.08  # approach the cube from this far above its centre (m)
CARRY_CLEARANCE = 0.15  # carried cube's bottom face above the table (m); lift succeeds at 0.10
# Distances (m) from the grasp centre along the finger axis that must stay clear: the open
# fingertips' outer faces and the ends of the hand.
HAND_REACH = (0.065, 0.085, 0.104)
# robosuite ramps the finger set-point across its range in 10 steps (0.5 s): closing reaches
# full grip force, and opening frees a held 4 cm cube, only after all 10.
GRASP_STEPS = 10
RELEASE_STEPS = 10
# Rotation of the end effector that points the gripper down at yaw 0 (fingers close along y).
DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
# Fingers count as open above this gap between them (m; the Panda's fully open gap is 0.079).
# An object counts as held while the fingers are closed on something (gap between 1 cm and
# OPEN_GAP) within 3 cm of its grasp point; closed on nothing, the gap falls below 1 cm.
OPEN_GAP = 0.07
HELD_GAP, HELD_DISTANCE = 0.01, 0.03
# An injected wrong grasp (see `WrongMove`) closes this far from the right grasp point: 2-5 cm
# sideways in any direction and 0-3 cm too high, the errors traced in cloned policies' failures.
MISTAKE_XY, MISTAKE_Z = (0.02, 0.05), (0.0, 0.03)
MISTAKE_TRIGGER_HEIGHT = 0.05  # starts once the descent is this close above the grasp point (m)
# An injected wrong placement (see `WrongMove`) lets go this far beside the place target: far
# enough that a cube stacked there falls off the one below (whose half size is 2.5 cm).
PLACE_MISTAKE_XY = (0.03, 0.045)
# An injected misaligned descent (see `WrongMove`) stops this far beside and above the place
# target with the object still held: inside the target's footprint, off its centre by more
# than the release needs (the traced failures of cloned stacking policies: 1.5-2.5 cm off
# centre, 0-4 cm above the resting height).
ALIGN_MISTAKE_XY, ALIGN_MISTAKE_Z = (0.02, 0.035), (0.005, 0.03)
ALIGN_MISTAKE_HOLD = 3  # steps it stays there: the approach stops within 8 mm of its goal, and the
                        # record's labels from the stalled state are what the policy lacks


@dataclass(frozen=True)
class Phase:
    """One sub-task.

    target(state, start) -> (3,) end-effector goal and yaw(state, start) -> rad, where `start`
    is the state when the phase began (for goals that must stay put: hold here, rise from
    here); yaw None keeps the yaw of the previous phase. The phase ends when the goal is within
    `tolerance` m (and `ready(state)` holds, when set), or after `wait` steps when `wait` is
    set. `redirect(state)`, when set, is checked first at every step: 0 lets the phase go on,
    n moves the expert n phases on (negative: back, to try again). `grasps` names the object
    whose grasp this phase descends to: where an injected wrong grasp happens; `places` the
    held object this phase lowers to its place: where an injected wrong placement happens.
    """

    label: str
    target: Callable[[dict, dict], np.ndarray]
    gripper: float
    yaw: Callable[[dict, dict], float] | None = None
    tolerance: float = 0.01
    wait: int | None = None
    xy_tolerance: float | None = None
    ready: Callable[[dict], bool] | None = None
    redirect: Callable[[dict], int] | None = None
    grasps: str | None = None
    places: str | None = None


def yaw_of(rotation: np.ndarray) -> float:
    """Heading of an object's x axis about world z (rad)."""
    return float(np.arctan2(rotation[1, 0], rotation[0, 0]))


def gripper_yaw(eef_rot: np.ndarray) -> float:
    """Yaw psi such that eef_rot ~= Rz(psi) @ DOWN."""
    return float(np.arctan2(-eef_rot[0, 0], eef_rot[1, 0]))


def finger_axis(yaw: float) -> np.ndarray:
    """Horizontal direction (2,) along which the fingers close at gripper yaw `yaw`."""
    return np.array([-np.sin(yaw), np.cos(yaw)])


def finger_gap(state: dict) -> float:
    """Distance between the fingers (m): the sum of the finger joints' travel."""
    return float(np.sum(np.abs(state["gripper_qpos"])))


def fingers_open(state: dict) -> bool:
    return finger_gap(state) > OPEN_GAP


def holding(name: str, grasp_above_centre: float = 0.0) -> Callable[[dict], bool]:
    """True while the fingers hold object `name`: closed on something (or closing), with the
    object's grasp point near the hand."""
    def held(state):
        grasp_point = object_pos(state, name) + [0.0, 0.0, grasp_above_centre]
        return (HELD_GAP < finger_gap(state) < OPEN_GAP
                and np.linalg.norm(state["eef_pos"] - grasp_point) < HELD_DISTANCE)
    return held


def footprint_distance(point: np.ndarray, pos: np.ndarray, rot: np.ndarray, half_extents) -> float:
    """Distance (m) in the table plane from `point` (2,) to an object's box footprint."""
    local = rot[:2, :2].T @ (point - pos[:2])
    return float(np.linalg.norm(np.maximum(np.abs(local) - half_extents, 0.0)))


def grasp_yaw(state: dict, cube: str) -> float:
    """Gripper yaw for a top grasp of object `cube` that keeps the hand farthest from others.

    A box can be grasped across either pair of faces. The Panda hand is 21 cm long along the
    finger axis, so of the two grasps take the one whose fingertips and hand ends land farther
    from the bin and the other cubes (touching the bin's rim or a cube stalls the arm). Both
    candidates stay within 90 degrees of the neutral yaw.
    """
    quarter = np.pi / 2
    aligned = (yaw_of(state["objects"][cube]["rot"]) + quarter / 2) % quarter - quarter / 2
    candidates = (aligned, aligned - quarter if aligned >= 0 else aligned + quarter)
    centre = state["objects"][cube]["pos"][:2]
    # Non-colliding objects (visual target markers) cannot stall the arm.
    others = {name: obj for name, obj in state["objects"].items() if name != cube and obj.get("collides", True)}

    def clearance(yaw):
        points = [centre + sign * reach * finger_axis(yaw) for reach in HAND_REACH for sign in (1, -1)]
        return min(
            footprint_distance(point, obj["pos"], obj["rot"], obj["half_size"][:2])
            for point in points
            for name, obj in others.items()
        ) if others else np.inf

    # Prefer the smaller wrist turn unless the other grasp is clearly roomier.
    return candidates[1] if clearance(candidates[1]) > clearance(candidates[0]) + 0.01 else candidates[0]


class WrongMove:
    """One grasp or release executed in the wrong place, as a cloned policy misjudging where the
    object is (or where it goes) makes it.

    From the moment it starts, the executed motion goes to `goal` with the fingers at
    `approach_gripper` (at most `APPROACH_STEPS`), switches them to `then_gripper` there for
    `hold_steps`, and rises `RISE` m for `RISE_STEPS` (when `rise`); then it is over. `grasp`,
    `place` and `align` draw the three kinds: closing 2-5 cm sideways and 0-3 cm above the right
    grasp point, letting go 3-4.5 cm beside the right place, and stopping the descent 1.5-3 cm
    beside and 0.5-3 cm above it with the object still held.
    """

    APPROACH_STEPS, RISE, RISE_STEPS = 25, 0.05, 6

    def __init__(self, goal: np.ndarray, approach_gripper: float, then_gripper: float, hold_steps: int,
                 rise: bool = True):
        self.goal, self.grippers, self.hold_steps = goal, (approach_gripper, then_gripper), hold_steps
        self.rise = rise
        self.stage, self.steps = "approach", 0

    @classmethod
    def grasp(cls, rng: np.random.Generator, grasp_point: np.ndarray) -> "WrongMove":
        return cls(grasp_point + [*_sideways(rng, MISTAKE_XY), rng.uniform(*MISTAKE_Z)], OPEN, CLOSE, GRASP_STEPS)

    @classmethod
    def place(cls, rng: np.random.Generator, release_point: np.ndarray) -> "WrongMove":
        return cls(release_point + [*_sideways(rng, PLACE_MISTAKE_XY), 0.01], CLOSE, OPEN, RELEASE_STEPS)

    @classmethod
    def align(cls, rng: np.random.Generator, release_point: np.ndarray) -> "WrongMove":
        # `release_point` is where the end effector lets go; the offset moves it and the held object alike
        offset = [*_sideways(rng, ALIGN_MISTAKE_XY), rng.uniform(*ALIGN_MISTAKE_Z)]
        return cls(release_point + offset, CLOSE, CLOSE, hold_steps=ALIGN_MISTAKE_HOLD, rise=False)

    def next_goal(self, state: dict) -> tuple[np.ndarray, float] | None:
        """(end-effector goal, gripper command) for this step; None once the mistake is over."""
        if self.stage == "approach" and (self.steps >= self.APPROACH_STEPS
                                         or np.linalg.norm(self.goal - state["eef_pos"]) < 0.008):
            self.stage, self.steps, self.goal = "act", 0, state["eef_pos"].copy()
        elif self.stage == "act" and self.steps >= self.hold_steps:
            if not self.rise:
                return None
            self.stage, self.steps, self.goal = "rise", 0, self.goal + [0.0, 0.0, self.RISE]
        elif self.stage == "rise" and self.steps >= self.RISE_STEPS:
            return None
        self.steps += 1
        return self.goal, self.grippers[0] if self.stage == "approach" else self.grippers[1]


def _sideways(rng: np.random.Generator, radius_range: tuple[float, float]) -> np.ndarray:
    """A horizontal offset (2,) of a length drawn from `radius_range`, in a random direction."""
    angle, radius = rng.uniform(0.0, 2 * np.pi), rng.uniform(*radius_range)
    return np.array([radius * np.cos(angle), radius * np.sin(angle)])


class ScriptedExpert:
    """Runs `phases` in order against `env` (a tabletop env, wrapped or not).

    act(obs) -> (7,) float32 action in [-1, 1]; `phase` is the label of the phase that chose
    the latest action. After the last phase ends the expert keeps holding its goal.
    With ``mistakes`` = p, a fraction p of episodes (drawn per `reseed`) executes one wrong
    grasp (`WrongMove.grasp`), with ``place_mistakes`` = q a fraction q one wrong release
    (`WrongMove.place`), and with ``align_mistakes`` = r a fraction r of the episodes without a
    wrong release one misaligned descent (`WrongMove.align`): `execute(action)` then returns
    the mistaken action to run while `act` keeps returning the expert's own, which is what gets
    recorded.
    """

    def __init__(self, env: gym.Env, phases: list[Phase], mistakes: float = 0.0, place_mistakes: float = 0.0,
                 align_mistakes: float = 0.0):
        for name, p in (("mistakes", mistakes), ("place_mistakes", place_mistakes),
                        ("align_mistakes", align_mistakes)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a fraction of episodes in [0, 1], got {p}")
        self.env = env.unwrapped
        self.phases = phases
        self.mistakes, self.place_mistakes, self.align_mistakes = mistakes, place_mistakes, align_mistakes
        self._rng = np.random.default_rng(0)
        # misaligned descents draw from their own stream, so turning them on leaves every other
        # draw (which grasps and releases go wrong, and where) as it was: a paired data ablation
        self._align_rng = np.random.default_rng([0, 1])
        self.reset()

    def reseed(self, seed: int) -> None:
        """Draw whether (and how) this episode's grasp or release goes wrong from `seed`: the
        same attempt seed gives the same episode in whichever process runs it."""
        self._rng = np.random.default_rng(seed)
        self._align_rng = np.random.default_rng([seed, 1])
        self._pending = self._draw_mistakes()

    def _draw_mistakes(self) -> set[str]:
        """The kinds of mistake this episode makes. The grasp coin is drawn first, and the place
        coin only when place mistakes are on and a phase places something (not for `lift`), so
        datasets collected before place mistakes existed are reproduced draw for draw. The align
        coin comes from its own stream; an episode that releases beside the target does not
        also misalign (both happen on the same descent)."""
        pending = set()
        if self.mistakes > 0 and self._rng.random() < self.mistakes:
            pending.add("grasp")
        places = any(p.places for p in self.phases)
        if self.place_mistakes > 0 and places and self._rng.random() < self.place_mistakes:
            pending.add("place")
        if (self.align_mistakes > 0 and places and self._align_rng.random() < self.align_mistakes
                and "place" not in pending):
            pending.add("align")
        return pending

    def reset(self) -> None:
        self._index = 0
        self._steps_in_phase = 0
        self._start: dict | None = None
        self._yaw: float | None = None
        self._arm_action = np.zeros(6)
        self._mistake: WrongMove | None = None
        self._pending = self._draw_mistakes()
        self._executed: np.ndarray | None = None
        self._executed_arm = np.zeros(6)

    @property
    def phase(self) -> str:
        return self.phases[self._index].label

    def act(self, obs: dict | None = None) -> np.ndarray:
        """(7,) action toward the current phase's goal. `obs` is unused: the expert reads the
        simulator's privileged state, so it also runs with cameras off."""
        state = self.env.privileged_state()
        if self._start is None:
            self._begin_phase(state)
        current = self.phases[self._index]
        goal = current.target(state, self._start)
        jump = current.redirect(state) if current.redirect is not None else 0
        if jump:
            self._index = min(max(0, self._index + jump), len(self.phases) - 1)
            self._begin_phase(state)
        elif self._phase_done(current, state, goal) and self._index + 1 < len(self.phases):
            self._index += 1
            self._begin_phase(state)
        current = self.phases[self._index]
        goal = current.target(state, self._start)
        self._steps_in_phase += 1
        action = self._action(current, state, goal)
        self._executed = self._mistaken_action(current, state, goal)
        return action

    def execute(self, action: np.ndarray) -> np.ndarray:
        """What to run in the env for `action` (the one `act` just returned): itself, except
        while an injected wrong grasp or release is under way."""
        return action if self._executed is None else self._executed

    def _mistaken_action(self, phase: Phase, state: dict, goal: np.ndarray) -> np.ndarray | None:
        if self._mistake is None:
            # a pending mistake starts once the descent to the grasp (or to the place) is close
            kind = None
            if phase.grasps:
                kind = "grasp"
            elif phase.places:
                kind = "align" if "align" in self._pending else "place"
            if not (kind in self._pending and state["eef_pos"][2] - goal[2] < MISTAKE_TRIGGER_HEIGHT):
                self._executed_arm = self._arm_action
                return None
            self._mistake = getattr(WrongMove, kind)(self._align_rng if kind == "align" else self._rng, goal)
            self._pending.discard(kind)
        step = self._mistake.next_goal(state)
        if step is None:  # over: the expert's own actions run again, and another pending kind may start
            self._mistake = None
            self._executed_arm = self._arm_action
            return None
        self._executed_arm = self._servo(state, step[0], self._executed_arm)
        return np.concatenate([self._executed_arm, [step[1]]]).astype(np.float32)

    def _begin_phase(self, state: dict) -> None:
        self._start = state
        self._steps_in_phase = 0
        self._yaw = gripper_yaw(state["eef_rot"]) if self._yaw is None else self._yaw

    def _phase_done(self, phase: Phase, state: dict, goal: np.ndarray) -> bool:
        if phase.wait is not None:
            return self._steps_in_phase >= phase.wait
        if phase.ready is not None and not phase.ready(state):
            return False
        if phase.yaw is not None:
            yaw_error = phase.yaw(state, self._start) - gripper_yaw(state["eef_rot"])
            if abs((yaw_error + np.pi) % (2 * np.pi) - np.pi) > YAW_TOLERANCE:
                return False
        error = goal - state["eef_pos"]
        if phase.xy_tolerance is not None:
            return bool(abs(error[2]) < phase.tolerance and np.linalg.norm(error[:2]) < phase.xy_tolerance)
        return bool(np.linalg.norm(error) < phase.tolerance)

    def _action(self, phase: Phase, state: dict, goal: np.ndarray) -> np.ndarray:
        if phase.yaw is not None:
            self._yaw = phase.yaw(state, self._start)
        self._arm_action = self._servo(state, goal, self._arm_action)
        return np.concatenate([self._arm_action, [phase.gripper]]).astype(np.float32)

    def _servo(self, state: dict, goal: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Proportional control, rate-limited from the `last` arm action: position error ->
        capped translation, yaw error -> rotation (the gripper kept pointing down)."""
        translation = (goal - state["eef_pos"]) / POS_SCALE
        norm = np.linalg.norm(translation)
        if norm > MAX_POS_ACTION:
            translation *= MAX_POS_ACTION / norm
        goal_rot = Rotation.from_euler("z", self._yaw).as_matrix() @ DOWN
        rotation_error = Rotation.from_matrix(goal_rot @ state["eef_rot"].T).as_rotvec()
        rotation = np.clip(rotation_error / ROT_SCALE, -MAX_ROT_ACTION, MAX_ROT_ACTION)
        change = np.concatenate([translation, rotation]) - last
        return last + np.clip(change, -MAX_ACTION_CHANGE, MAX_ACTION_CHANGE)


# --------------------------------------------------------------------------- targets
def object_pos(state: dict, name: str) -> np.ndarray:
    return state["objects"][name]["pos"]


def above(name: str, height: float) -> Callable:
    """Goal `height` m above object `name`'s centre (follows the object)."""
    return lambda state, start: object_pos(state, name) + [0.0, 0.0, height]


def hold() -> Callable:
    """Goal where the end effector was when the phase began."""
    return lambda state, start: start["eef_pos"]


def rise_from_start(height: float) -> Callable:
    """Goal `height` m straight above where the end effector was when the phase began."""
    return lambda state, start: start["eef_pos"] + [0.0, 0.0, height]


def carry_object_to(name: str, destination: Callable[[dict, dict], np.ndarray]) -> Callable:
    """Goal that brings the held object's centre to destination(state, start): the end effector
    moves by the object's error, so an object that slipped in the fingers still lands right."""
    return lambda state, start: state["eef_pos"] + destination(state, start) - object_pos(state, name)


def carry_height(state: dict, name: str) -> float:
    """Height (m) of a carried object's centre: its bottom CARRY_CLEARANCE above the table."""
    return state["table_height"] + CARRY_CLEARANCE + state["objects"][name]["half_size"][2]


def grasp_yaw_of(name: str) -> Callable:
    """The grasp yaw chosen from the state at the phase's start (so it cannot flip mid-way)."""
    return lambda state, start: grasp_yaw(start, name)


# --------------------------------------------------------------------------- phases
def pick_phases(name: str, noun: str, grasp_above_centre: float = 0.0) -> list[Phase]:
    """Hover over object `name`, descend, close the fingers `grasp_above_centre` m above its
    centre, lift it straight up to carry height. `noun` names it in the labels ("the red
    cube" -> "grasp the red cube")."""

    def lifted(state, start):
        return np.array([*object_pos(start, name)[:2], carry_height(state, name)])

    held = holding(name, grasp_above_centre)

    return [
        Phase(f"reach {noun}", above(name, HOVER), OPEN, yaw=grasp_yaw_of(name), tolerance=0.015, ready=fingers_open),
        # Close once the fingers are at the object's height and within GRASP_XY_TOLERANCE of its
        # centre: closing fingers centre the object, and a policy learns "close at this height"
        # from proprioception far more precisely than "close within 6 mm of a seen point".
        # Fingers closing on the way (a wrong grasp): if they caught the object, finish the grasp;
        # if not, go back up to hover and open them.
        Phase(f"reach {noun}", above(name, grasp_above_centre), OPEN, yaw=grasp_yaw_of(name), tolerance=0.006,
              xy_tolerance=GRASP_XY_TOLERANCE, grasps=name,
              redirect=lambda state: 0 if fingers_open(state) else 1 if held(state) else -1),
        Phase(f"grasp {noun}", hold(), CLOSE, wait=GRASP_STEPS),
        # Lifting with nothing in hand (a missed or slipped grasp) starts the pick again.
        Phase(f"lift {noun}", carry_object_to(name, lifted), CLOSE,
              redirect=lambda state: 0 if held(state) else -3),
    ]


PICK_PHASES = len(pick_phases("object", "the object"))  # carry_phases follows them and jumps back to their start


def carry_phases(name: str, noun: str, place: str, preposition: str, over: Callable, down: Callable,
                 placed: Callable[[dict], bool] | None = None, grasp_above_centre: float = 0.0) -> list[Phase]:
    """Move held object `name` at carry height over(state) -> (2,) xy, lower it to down(state) ->
    (3,), open the fingers and back off upwards. Labels read "lower <noun> <preposition> <place>".

    They follow `pick_phases` of the same object and go back to its first phase to pick the
    object up again when it is lost on the way (no longer held while carried or lowered), or,
    with a `placed(state)` test, when it has not stayed in its place after the release.
    """

    def above_place(state, start):
        return np.array([*over(state), carry_height(state, name)])

    held = holding(name, grasp_above_centre)

    def back_to_pick(phase_index: int) -> int:
        return -(PICK_PHASES + phase_index)

    def lowering(state) -> int:
        if held(state):
            return 0
        return 1 if placed is not None and placed(state) else back_to_pick(1)

    return [
        Phase(f"move {noun} above {place}", carry_object_to(name, above_place), CLOSE,
              redirect=lambda state: 0 if held(state) else back_to_pick(0)),
        Phase(f"lower {noun} {preposition} {place}", carry_object_to(name, lambda s, _: down(s)), CLOSE,
              redirect=lowering, places=name),
        Phase(f"release {noun}", hold(), OPEN, wait=RELEASE_STEPS),
        Phase("move the gripper up", rise_from_start(0.08), OPEN,
              redirect=None if placed is None else lambda state: 0 if placed(state) else back_to_pick(3)),
    ]
