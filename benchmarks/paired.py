"""Compare two evaluations of the same seeds episode by episode (exact McNemar test).

    python -m benchmarks.paired outputs/a/eval outputs/b/eval     # report.json files or their dirs

Use it where the pairing is real: one checkpoint evaluated two ways (``eval.n_action_steps``,
``eval.inference_steps``, ...), or two checkpoints on the same seeds when only the evaluation
noise is in question. It says nothing about the spread between training runs: a claim about a
recipe still needs >= 3 training seeds.
"""

import argparse
import json
import sys
from pathlib import Path

from vla.report import paired_comparison


def load(path: str) -> dict:
    p = Path(path)
    return json.loads((p / "report.json" if p.is_dir() else p).read_text())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args(argv)
    try:
        r = paired_comparison(load(args.a), load(args.b))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{r['episodes']} paired episodes: A {r['success_a']:.0%}, B {r['success_b']:.0%}; "
          f"A alone won {r['only_a']}, B alone won {r['only_b']}; exact McNemar p = {r['p_value']:.3f}")
    return r


if __name__ == "__main__":
    main()
