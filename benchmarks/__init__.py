"""Benchmarks of vla against LeRobot: ``make benchmarks`` runs them all (see RESULTS.md)."""
