"""Writing the site's files: HTML templates and the data scripts that pages load with <script> tags.

Pages are static HTML rendered by the site's own JavaScript (assets/site.js and one script per
page). Their data lives in SITE/data/*.js files, each one call `saeKitRegister(kind, key, payload)`:
a page adds a <script src> for what it needs (file:// forbids fetch and XHR, but not scripts).
"""

from __future__ import annotations

import json
from importlib import resources
from string import Template

REGISTER = "saeKitRegister"
"""The global function every data script calls (defined by assets/site.js)."""


def embed_json(payload) -> str:
    """JSON safe inside <script> (inline or a file): '<', '>' and '&' are escaped, so no token text
    can close a script element or start markup; U+2028/9 are escaped for older JS parsers."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e").replace(
        "\u2028", "\\u2028").replace("\u2029", "\\u2029")


def data_script(kind: str, key: int, payload) -> str:
    """The text of a data file: one registration call. An external script needs no HTML escaping
    ('</script>' in a string is harmless there), so the codes' '&', '<' and '>' stay one byte."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f"{REGISTER}({json.dumps(kind)},{int(key)},{text});\n"


def render(template: str, **values: str) -> str:
    """Fill a page template ($name placeholders; every value already escaped by the caller)."""
    return Template(template).substitute(**values)


def template(name: str) -> str:
    """A file shipped in sae_kit/dashboard (page templates, CSS, JS)."""
    return resources.files("sae_kit.dashboard").joinpath(name).read_text(encoding="utf-8")
