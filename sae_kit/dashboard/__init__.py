"""Feature dashboards: a static, offline HTML site built from an analysis directory.

    build_site(analysis_dir, out_dir, features=None, top=None, ...) -> out_dir

`sae-kit dashboard --analysis A --out SITE [--features 0-99 | --top 200]` is the CLI. See
`sae_kit.dashboard.site` for the layout of the site.
"""

from __future__ import annotations

from sae_kit.dashboard.site import build_site

__all__ = ["add_cli", "build_site"]


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("dashboard", help="write a static HTML site of feature pages (works offline, from file://)")
    p.add_argument("--analysis", required=True, help="analysis directory (from sae-kit analyze)")
    p.add_argument("--out", required=True, help="site directory to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--features", help="feature ids and ranges, e.g. 0-99,120,300-310")
    which.add_argument("--top", type=int, help="the N features first by --sort-by (within the density range)")
    p.add_argument("--sort-by", default="max_activation", choices=["max_activation", "density", "mean_nonzero", "index"],
                   help="order for --top (default max_activation, largest first)")
    p.add_argument("--min-density", type=float, default=0.0, help="with --top: leave out rarer features (default 0)")
    p.add_argument("--max-density", type=float, default=1.0, help="with --top: leave out denser features (default 1)")
    p.add_argument("--before", type=int, default=10, help="tokens shown before each example token (default 10)")
    p.add_argument("--after", type=int, default=4, help="tokens shown after it (default 4)")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="a text for the prompt view (repeat; loads the language model)")
    p.add_argument("--prompt-contexts", type=int, default=3, help="stored contexts shown in the prompt view (default 3)")
    p.add_argument("--device", help="cpu, cuda … for re-encoding (default: CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing site in --out")
    p.set_defaults(func=_run_dashboard)


def _run_dashboard(args) -> int:
    from sae_kit.analysis import load_analysis, parse_feature_list

    features = None
    if args.features:
        features = parse_feature_list(args.features, load_analysis(args.analysis).n_features)
    out = build_site(args.analysis, args.out, features=features, top=args.top, sort_by=args.sort_by,
                     min_density=args.min_density, max_density=args.max_density, before=args.before, after=args.after,
                     prompts=args.prompt, prompt_contexts=args.prompt_contexts, device=args.device,
                     overwrite=args.overwrite)
    print(f"wrote {out / 'index.html'} (open it in a browser; it works offline)")
    return 0
