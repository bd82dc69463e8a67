"""Feature dashboards: a static, offline HTML site built from an analysis directory.

    build_site(analysis_dir, out_dir, features=None, top=None, **SiteOptions fields) -> out_dir

`sae-kit dashboard --analysis A --out SITE [--features 0-99 | --top 200]` is the command. See
`sae_kit.dashboard.site` for the layout of the site.
"""

from sae_kit.dashboard.site import SiteOptions, build_site

__all__ = ["SiteOptions", "build_site"]
