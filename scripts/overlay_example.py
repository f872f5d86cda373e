"""The README's overlay example: one good image and one of each defect kind of a scored run, as
`score` draws them (`notebook.evidence_figure`), saved as a JPEG.

    python scripts/overlay_example.py runs/benchmark/patchknn [--out docs/overlay_example.jpg]
"""

import argparse

import matplotlib

matplotlib.use("Agg")

from anomaly.notebook import evidence_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("run", help="a scored run folder (its predictions.npz)")
    parser.add_argument("--out", default="docs/overlay_example.jpg")
    args = parser.parse_args()
    fig = evidence_figure(args.run)
    fig.savefig(args.out, dpi=80, pil_kwargs={"quality": 85})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
