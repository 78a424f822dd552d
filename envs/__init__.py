"""Simulated tasks behind the gymnasium API, in the feature convention of `vla.features`.

`envs.tabletop`: language-conditioned robosuite Panda tasks (lift, stack, place) and their
scripted experts. Importing `envs` loads no simulator.
"""
