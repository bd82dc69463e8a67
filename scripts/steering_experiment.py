"""A steering experiment over several features and prompts, through the library API.

For each chosen feature: clamp it to a range of multiples of its maximum activation while the
model generates from each prompt, and record the texts, the KL of the next-token distribution from
the baseline, and the shift in log-probability of the tokens the feature promotes. Writes one
report per feature (report.md, report.html, results.json) and an index README.md.

    python scripts/steering_experiment.py --run runs/sae --analysis analysis/ --out reports/steering
    python scripts/steering_experiment.py --run runs/sae --analysis analysis/ --features 12,345 --out DIR
    python scripts/steering_experiment.py --run runs/sae --analysis analysis/ --out DIR --quick

Features, unless given: those with density between 1e-4 and 1e-2, the ones with the largest
maximum activation first (`sae_kit.analysis.select_features`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sae_kit.analysis import load_analysis, select_features
from sae_kit.autoencoders import RunInfo, load_autoencoder
from sae_kit.lm.models import load_model
from sae_kit.steering.generate import GenerateOptions
from sae_kit.steering.report import PLOTLY_FILE, write_report
from sae_kit.steering.sweep import steering_sweep

PROMPTS = [
    "The weather today is",
    "def read_config(path):",
    "My favourite thing about the city is",
    "Return a list of",
]
# Multiples of each feature's max activation: the range where a small model (SmolLM2-135M) stays
# fluent (about 0.5–1.5×) and where it breaks down (≥ 2×; Templeton et al. used up to 10× on a
# much larger model).
VALUES = [-2, -1, 0, 0.5, 1, 1.5, 2, 5, 10]


def choose_features(analysis, n: int) -> list[int]:
    """`select_features`' default criterion (density in [1e-4, 1e-2], largest max activation
    first), topped up with the strongest other live features when fewer qualify."""
    chosen = select_features(analysis, limit=n)
    if len(chosen) < n:
        others = [i for i in select_features(analysis, min_density=0.0, max_density=1.0) if i not in chosen]
        chosen += others[: n - len(chosen)]
    return chosen


def fires_on(analysis, tokenizer, feature: int, n: int = 10) -> str:
    """The distinct tokens of the feature's top activating examples (from the analysed store)."""
    try:
        from sae_kit.harvest import ActivationStore

        store = ActivationStore(analysis.info["store"])
        tokens = store.gather(None, analysis.top_indices[feature][:n])["tokens"].tolist()
    except Exception:  # the store moved or was deleted: the column is a convenience
        return ""
    return ", ".join(dict.fromkeys(repr(tokenizer.decode([t])) for t in tokens))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="trained SAE run directory")
    parser.add_argument("--analysis", required=True, help="its analysis directory (max activations, logit effects)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--features", help="comma-separated feature ids (default: chosen automatically)")
    parser.add_argument("--prompts-file", help="one prompt per line (default: four built-in prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="2 features, 2 prompts, 3 values, 6 tokens")
    args = parser.parse_args(argv)

    n_features, values, prompts, n_tokens = 4, VALUES, PROMPTS, args.max_new_tokens
    if args.quick:
        n_features, values, prompts, n_tokens = 2, [0, 1, 5], PROMPTS[:2], 6
    if args.prompts_file:
        prompts = [line for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]

    sae = load_autoencoder(args.run)
    analysis = load_analysis(args.analysis)
    features = [int(f) for f in args.features.split(",")] if args.features else choose_features(analysis, n_features)
    loaded = load_model(RunInfo.of(sae).language_model())
    sae = sae.to(loaded.device)
    options = GenerateOptions(max_new_tokens=n_tokens, seed=0)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from plotly.offline import get_plotlyjs

    (out / PLOTLY_FILE).write_text(get_plotlyjs())  # once, shared by every feature's page
    rows = []
    command = "python scripts/steering_experiment.py " + " ".join(argv if argv is not None else sys.argv[1:])
    shown = min(range(len(values)), key=lambda j: abs(sorted(values)[j] - 1))  # the value nearest 1×
    for feature in features:
        print(f"feature {feature}: sweeping {values} × max activation on {len(prompts)} prompts", file=sys.stderr)
        result = steering_sweep(loaded, sae, analysis, feature, values, prompts, options=options,
                                settings={"run": str(Path(args.run).resolve()), "command": command})
        write_report(result, out / f"feature-{feature}", plotly_js=f"../{PLOTLY_FILE}")
        kl = sum(pr.outcomes[shown].kl_continuation for pr in result.prompts) / len(result.prompts)
        example = result.prompts[0].outcomes[shown].text
        rows.append([f"[feature-{feature}](feature-{feature}/report.md)", f"{result.max_activation:.3g}",
                     fires_on(analysis, loaded.tokenizer, feature), f"{kl:.3f}", example])

    dose = sorted(values)[shown]
    index = [
        "# Steering experiment", "",
        f"Model `{loaded.name}`, SAE `{args.run}`, {len(prompts)} prompts, values {values} × max activation, "
        f"greedy, {n_tokens} new tokens. Clamping keeps the SAE error term (Templeton et al. 2024). "
        "Each feature's report has the whole sweep; below, the clamp nearest 1× its max.", "",
        f"| feature | max act. | fires most on | mean KL at {dose:g}× (nats) | first prompt at {dose:g}× |",
        "|---|---:|---|---:|---|",
        *("| " + " | ".join(cell.replace("\n", "↵ ").replace("|", "\\|") for cell in row) + " |" for row in rows), "",
    ]
    (out / "README.md").write_text("\n".join(index))
    print(f"wrote {out / 'README.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
