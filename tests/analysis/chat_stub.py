"""A tiny OpenAI-compatible chat server on 127.0.0.1 for autointerp tests: real HTTP, no network.

It plays both roles deterministically, so the scores it leads to can be computed by hand:
- explainer (the prompt lists "Strengths:"): names the first marked span of excerpt 1 as the
  feature's marker: 'Explanation: the token «X»';
- scorer: reads X back from the "Description:" line and says yes to an excerpt exactly when X
  occurs in its marked spans (fuzzing) or, without marks, anywhere in it (detection). One
  excerpt: "yes"/"no" (or, with logprobs, P(yes) 0.9 / 0.1); several: their numbers or "none".
`mode="always-yes"` answers yes to everything, `mode="garbage"` answers nothing readable.
"""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKED = re.compile(r"<<(.*?)>>", re.DOTALL)
MARKER = re.compile(r"Description: the token «(.*?)»")


def marker_of(description: str) -> str | None:
    found = MARKER.search(description)
    return found.group(1) if found else None


def says_yes(marker: str, excerpt: str) -> bool:
    """The stub scorer's verdict on one excerpt's text."""
    spans = MARKED.findall(excerpt)
    return any(marker in span for span in spans) if spans else marker in excerpt


def first_span(explainer_prompt: str) -> str:
    first = explainer_prompt.split("\n", 1)[0]  # "Excerpt 1: … <<X>> …"
    spans = MARKED.findall(first)
    return (spans[0].strip() or spans[0]) if spans else ""


class ChatStub:
    """Start with `with ChatStub() as stub:`; `stub.url` is the base URL (…/v1)."""

    def __init__(self, mode: str = "marker"):
        self.mode = mode
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append(body)
                    stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                reply = json.dumps(stub.respond(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "ChatStub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def verdicts(self, user: str) -> list[bool]:
        marker = marker_of(user) or "\0"
        single = re.search(r"\nExcerpt: (.*?)\n\n", user, re.DOTALL)
        texts = [single.group(1)] if single else re.findall(r"^Excerpt \d+: (.*)$", user, re.MULTILINE)
        if self.mode == "always-yes":
            return [True] * len(texts)
        return [says_yes(marker, text) for text in texts]

    def respond(self, body: dict) -> dict:
        user = body["messages"][-1]["content"]
        logprobs = None
        if "Strengths:" in user:
            text = f"Looking at the marks.\nExplanation: the token «{first_span(user)}»"
        elif self.mode == "garbage":
            text = "hmm"
        else:
            verdicts = self.verdicts(user)
            if len(verdicts) == 1:
                text = "yes" if verdicts[0] else "no"
                if body.get("logprobs"):
                    p = 0.9 if verdicts[0] else 0.1
                    top = [{"token": "yes", "logprob": math.log(p), "bytes": None},
                           {"token": "no", "logprob": math.log(1 - p), "bytes": None}]
                    logprobs = {"content": [{"token": text, "logprob": math.log(max(p, 1 - p)), "bytes": None,
                                             "top_logprobs": top}]}
            else:
                picked = [str(i + 1) for i, v in enumerate(verdicts) if v]
                text = ", ".join(picked) if picked else "none"
        return {"id": f"stub-{len(self.requests)}", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                             "logprobs": logprobs}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
