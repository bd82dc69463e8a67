"""Feature dashboards: a static, offline HTML site built from an analysis directory.

    build_site(analysis_dir, out_dir, features=None, top=None, **SiteOptions fields) -> out_dir

`sae-kit dashboard --analysis A --out SITE [--all | --features 0-99 | --top 200]` is the command
(`--all`, every feature that fired, is the default). One page renders any feature
(SITE/feature.html#123) from compact sharded data files; the index searches and sorts every
feature; the map shows decoder directions in 2-D. See `sae_kit.dashboard.site` for the layout.
"""

from sae_kit.dashboard.site import SiteOptions, build_site

__all__ = ["SiteOptions", "build_site"]
