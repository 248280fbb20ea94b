"""Every example in the README and the documentation runs, and the site builds offline.

Each fenced block of README.md and docs/*.md is one test, named by file and line:

- `bash` blocks made of `curl` and `coordconv client` commands run as written against a live
  server (`localhost:8000` rewritten to its port), each in a fresh folder that holds what the
  examples before it make (`square.png`, `other.png`, `images.npy`) and a copy of `examples/`;
  a command whose answer the prose after the block shows ("prints `...`") must print it;
- `python` blocks run against the same server (ports rewritten; `COORDCONV_URL` set);
- `yaml` and `json` blocks parse; `protobuf` blocks parse as Triton's `ModelConfig` text format
  with the service's own reader; `text` blocks that draw a folder tree name folders and modules
  that exist;
- a block that needs what a test cannot have here (training, Docker, a GPU, Kubernetes, a long
  run) says so on the line before its fence, `<!-- docs-test: skip (what it needs) -->`, and is
  reported as skipped with that reason. Any other block is a failure: no silent skips.

Then the names: every `COORDCONV_*` variable and every setting written in capitals is real, and
the settings page (generated from `Settings`) is current and lists them all. Then the site:
`mkdocs build --strict` passes, its pages load nothing from another host, and the demo page's
link to it resolves where the site is built (and is a clear 404 where it is not).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import httpx
import pytest
import yaml

from tests.helpers import ROOT, TLS, LiveServer, live_server

BIN = Path(sys.executable).parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\S*)[ \t]*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
SKIP = re.compile(r"skip \((.+)\)")
SERVICE_COMMANDS = ("curl ", "coordconv client ")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    body: str
    skip: str | None  # the reason its marker gives
    after: str  # the paragraph after the block: what the prose says it prints

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = len(opening[1]), opening[2]
        end = i + 1
        while end < len(lines) and not re.match(r"^ *```\s*$", lines[end]):
            end += 1
        assert end < len(lines), f"{path.relative_to(ROOT)}:{i + 1}: the fence is never closed"
        body = "\n".join(ln[indent:] for ln in lines[i + 1 : end]) + "\n"
        marker = MARKER.match(lines[i - 1]) if i else None
        skip = None
        if marker:
            reason = SKIP.fullmatch(marker[1])
            assert reason, f"{path.relative_to(ROOT)}:{i}: a marker is `skip (what it needs)`"
            skip = reason[1]
        after: list[str] = []
        for ln in lines[end + 1 :]:
            if after and not ln.strip():
                break
            if ln.strip():
                after.append(ln)
        found.append(Block(path, i + 1, lang, body, skip, " ".join(after)))
        i = end + 1
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]


def commands(body: str) -> list[str]:
    """The first line of each shell command (comments, blank lines and continuations left out)."""
    starts, continued = [], False
    for ln in body.splitlines():
        stripped = ln.strip()
        if not continued and stripped and not stripped.startswith("#") and ln == ln.lstrip():
            starts.append(ln)
        continued = ln.rstrip().endswith("\\")
    return starts


def kind(block: Block) -> str:
    if block.lang == "bash":
        starts = commands(block.body)
        return "service" if starts and all(s.startswith(SERVICE_COMMANDS) for s in starts) else ""
    return {"python": "python", "yaml": "yaml", "json": "json", "protobuf": "pbtxt"}.get(
        block.lang, "text" if block.lang == "text" else ""
    )


def params() -> list[Any]:
    out = []
    for b in ALL_BLOCKS:
        marks = [pytest.mark.skip(reason=f"{b.where}: {b.skip}")] if b.skip else []
        out.append(pytest.param(b, id=b.where, marks=marks))
    return out


# -- the examples ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with live_server() as server:
        yield server


@pytest.fixture
def workdir(tmp_path: Path, live: LiveServer) -> Path:
    """What a reader has made by the time they reach any example: the quick start's two PNGs,
    the render examples' images.npy, and the repository's sample inputs."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    with live.client() as c:
        for name, point in (("square.png", [10, 20]), ("other.png", [40, 33])):
            r = c.post("/v1/render", json={"coords": [point]})
            r.raise_for_status()
            (tmp_path / name).write_bytes(base64.b64decode(r.json()["images"][0]))
        r = c.post(
            "/v1/render", json={"coords": [[10, 20]]}, headers={"Accept": "application/x-npy"}
        )
        r.raise_for_status()
        (tmp_path / "images.npy").write_bytes(r.content)
    return tmp_path


def rewrite(text: str, live: LiveServer) -> str:
    for host in ("localhost", "127.0.0.1"):
        text = text.replace(f"{host}:8000", f"127.0.0.1:{live.port}")
        text = text.replace(f"{host}:8001", f"127.0.0.1:{live.grpc_port}")
    return text


def environment(live: LiveServer) -> dict[str, str]:
    return {
        **os.environ,
        "COORDCONV_URL": live.url,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # `coordconv` as `make run` installs it
    }


SHOWN = re.compile(r"prints `([^`]+)`")


@pytest.mark.parametrize("block", params())
def test_every_example_runs(block: Block, request: pytest.FixtureRequest) -> None:
    what = kind(block)
    assert what, (
        f"{block.where}: a ```{block.lang or '(no language)'} block this test cannot run or "
        "check; mark it `<!-- docs-test: skip (what it needs) -->` on the line before the fence"
    )
    if what == "yaml":
        assert yaml.safe_load(block.body) is not None, block.where
    elif what == "json":
        json.loads(block.body)
    elif what == "pbtxt":
        from service.models.config import parse_text

        parse_text(block.body, block.where)
    elif what == "text":
        check_tree(block)
    else:
        live: LiveServer = request.getfixturevalue("live")
        cwd: Path = request.getfixturevalue("workdir")
        if what == "service":
            if not (shutil.which("curl") and shutil.which("jq")):
                pytest.skip("needs curl and jq")
            argv = ["bash", "-euo", "pipefail", "-c", rewrite(block.body, live)]
        else:
            argv = [sys.executable, "-c", rewrite(block.body, live)]
        proc = subprocess.run(
            argv, cwd=cwd, env=environment(live), capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"{block.where}\n{block.body}\n{proc.stdout}\n{proc.stderr}"
        if what == "service":
            assert '"detail"' not in proc.stdout and '"error"' not in proc.stdout, (
                f"{block.where}\n{proc.stdout[:500]}"
            )
        for shown in SHOWN.findall(block.after):
            assert shown in proc.stdout, f"{block.where}: prints {shown!r}? got\n{proc.stdout}"


def test_the_docs_have_examples_that_run_against_the_service() -> None:
    kinds = [kind(b) for b in ALL_BLOCKS if not b.skip]
    assert kinds.count("service") >= 8 and kinds.count("python") >= 4, kinds
    # the answer the HTTP API page shows is checked against the live server
    assert any(SHOWN.search(b.after) for b in ALL_BLOCKS if kind(b) == "service")


def test_every_marker_sits_on_a_fence() -> None:
    for page in PAGES:
        lines = page.read_text().splitlines()
        for i, ln in enumerate(lines):
            if MARKER.match(ln):
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                assert FENCE.match(nxt), f"{page.relative_to(ROOT)}:{i + 1}: no fence after it"


# -- folder trees in text blocks -------------------------------------------------------------------

PY = re.compile(r"[\w/]+\.py\b")


def check_tree(block: Block) -> None:
    """A `text` block that draws folders (lines that start with `name/`) names folders and
    modules that exist: top-level lines from the repository root, indented ones inside the last
    top-level folder. A block without such lines is a drawing; there is nothing to check."""
    top: Path | None = None
    sub: Path | None = None  # the folder of the last indented `name/` line
    for ln in block.body.splitlines():
        first = ln.split()[0] if ln.split() else ""
        if first.endswith("/") and not ln.startswith(" "):
            top, sub = ROOT / first, None
            assert top.is_dir(), f"{block.where}: no folder {first}"
            continue
        if top is None or not ln.startswith(" "):
            continue
        if first.endswith("/"):
            sub = top / first
            assert sub.is_dir(), f"{block.where}: no folder {sub.relative_to(ROOT)}"
        for module in PY.findall(ln):  # in the sub-folder, or (a line of its own) in the folder
            places = [p for p in (sub, top) if p is not None]
            assert any((p / module).is_file() for p in places), (
                f"{block.where}: no {module} in {[str(p.relative_to(ROOT)) for p in places]}"
            )


# -- settings: the generated page and the names the pages use ------------------------------------


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_settings", ROOT / "docs" / "gen_settings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setting_names() -> set[str]:
    from service.settings import Settings

    return {name.upper() for name in Settings.model_fields}


def test_the_settings_page_is_generated_and_current() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == generator().render(), (
        "docs/settings.md is stale: run python docs/gen_settings.py"
    )
    for name in setting_names():
        assert f"| `COORDCONV_{name}` |" in page, name
    for variable in ("COORDCONV_URL", "COORDCONV_API_KEY"):
        assert f"| `{variable}` | `--" in page, variable


def test_the_settings_generator_needs_no_torch() -> None:
    code = (
        "import runpy, sys; runpy.run_path('docs/gen_settings.py')['render'](); "
        "heavy = {'torch', 'onnxruntime', 'training'} & set(sys.modules); assert not heavy, heavy"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def other_variables() -> dict[str, str]:
    """Names in capitals the pages may use that are not server settings, each with its reason."""
    import grpc
    from grpc_health.v1 import health_pb2
    from tritonclient.grpc import model_config_pb2 as mc

    known: dict[str, str] = {}
    for variable in generator().client_variables():
        known[variable] = "the client reads it (client/cli.py, client/api.py)"
    compose = (ROOT / "docker-compose.yml").read_text()
    for variable in re.findall(r"\$\{(COORDCONV_[A-Z0-9_]+)", compose):
        known.setdefault(variable, "docker-compose.yml reads it")
    for code in grpc.StatusCode:
        known[code.name] = "a gRPC status code"
    for status in health_pb2.HealthCheckResponse.ServingStatus.DESCRIPTOR.values:
        known[status.name] = "a gRPC health status"
    for enum in (mc.DataType, mc.ModelInstanceGroup.Kind):
        for value in enum.DESCRIPTOR.values:
            known[value.name] = "a value of Triton's ModelConfig"
    known.update(
        {
            "CUDA_VISIBLE_DEVICES": "CUDA's own: which GPUs a process sees",
            "RAY_ADDRESS": "Ray's own: the cluster to join",
            "PIP_FIND_LINKS": "pip's own: a local wheel folder",
            "TORCH_INDEX_URL": "a build argument of the Dockerfile",
            "DOCKER_BUILDKIT": "Docker's own: the builder",
            "DOCKER_TEST": "tests/system/test_docker.py: fail instead of skip without an engine",
            "COMPARE_ARGS": "a make variable (make compare)",
            "FUZZ_EXAMPLES": "tests/service/test_fuzz.py: examples per operation",
            "SO_REUSEPORT": "a socket option (the workers share the gRPC port)",
            "OMP_NUM_THREADS": "OpenMP's own: torch's threads (tests/conftest.py, training/cpu.py)",
        }
    )
    return known


# OpenTelemetry's standard variables, read by its SDK (service/metrics/tracing.py).
OTHER_PREFIXES = ("OTEL_",)
# NAME_WITH_UNDERSCORES, and families such as LIMIT_*.
CAPITALS = re.compile(r"\b[A-Z][A-Z0-9_]*_\*|\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
ASSIGNED = re.compile(r"(?:^|[\s;&|(])([A-Z][A-Z0-9_]*)=", re.M)


def prose(text: str) -> str:
    """The page without its fenced blocks."""
    return re.sub(r"^ *```\S*[ \t]*\n.*?^ *```[ \t]*$", "", text, flags=re.S | re.M)


def known_name(name: str, settings: set[str], others: dict[str, str]) -> bool:
    bare = name.removeprefix("COORDCONV_")
    if name.endswith("_*"):  # a family: COORDCONV_*, LIMIT_*, OTEL_BSP_*
        stem = bare[:-1]
        return any(s.startswith(stem) for s in settings) or name.startswith(OTHER_PREFIXES)
    if name.startswith("COORDCONV_"):
        return bare in settings or name in others
    return name in settings or name in others or name.startswith(OTHER_PREFIXES)


def test_every_setting_the_pages_name_is_real() -> None:
    """`COORDCONV_*` anywhere, names in capitals with an underscore in inline code
    (`MAX_BATCH_SIZE`: a setting by its name), and variables a shell example assigns
    (`NAME=value`) are settings, the client's or compose's variables, or listed in
    `other_variables` with the reason. (A setting of one word, `PORT`, cannot be told from other
    words in capitals, such as `READY`.)"""
    settings, others = setting_names(), other_variables()
    wrong = []
    for page in PAGES:
        text = page.read_text()
        where = page.relative_to(ROOT)
        named = set(re.findall(r"COORDCONV_[A-Z0-9_]*[A-Z0-9](?:_\*)?", text))
        for span in re.findall(r"`([^`]+)`", prose(text)):
            named.update(CAPITALS.findall(span))
        for block in blocks(page):
            if block.lang == "bash":
                named.update(ASSIGNED.findall(block.body))
        wrong += [f"{where}: {n}" for n in sorted(named) if not known_name(n, settings, others)]
    assert not wrong, "not a setting or a known variable:\n" + "\n".join(wrong)


def test_the_cache_section_names_the_variable() -> None:
    """Issue 38: the cache's size is `COORDCONV_CACHE_SIZE_BYTES` (`CACHE_SIZE_BYTES` alone is no
    environment variable)."""
    page = (ROOT / "docs" / "cache-warmup-ensembles.md").read_text()
    section = page[page.index("## Response cache") : page.index("## Warm-up")]
    assert "`COORDCONV_CACHE_SIZE_BYTES`" in section and "--cache-size-bytes" in section
    assert "CACHE_SIZE_BYTES" not in section.replace("COORDCONV_CACHE_SIZE_BYTES", "")


# -- the site --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


class Resources(HTMLParser):
    """The URLs a page loads: scripts, styles, images, fonts, frames (not the links it shows)."""

    LOADS: ClassVar[dict[str, str]] = {
        **dict.fromkeys(("script", "img", "iframe", "source", "embed", "video", "audio"), "src"),
        "link": "href",
        "object": "data",
    }

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        attr = self.LOADS.get(tag)
        if attr and values.get(attr):
            self.urls.append(values[attr] or "")
        if values.get("srcset"):
            self.urls += [part.split()[0] for part in (values["srcset"] or "").split(",")]
        if values.get("style"):
            self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", values["style"] or "")


def remote(url: str) -> bool:
    """True for a URL on another host (loopback and relative URLs stay on this machine)."""
    match = re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//([^/:?#]+)", url.strip(), re.I)
    if url.strip().startswith("data:") or not match:
        return False
    return match[1].lower() not in {"localhost", "127.0.0.1", "[::1]"}


def test_the_site_builds_strict_and_loads_nothing_from_another_host(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert (site / "index.html").is_file() and (site / "settings" / "index.html").is_file()
    assert len(pages) >= 15
    loads = []
    for page in pages:
        parser = Resources()
        parser.feed(page.read_text())
        loads += [f"{page.relative_to(site)}: {u}" for u in parser.urls if remote(u)]
    for css in sorted(site.rglob("*.css")):
        text = css.read_text()
        urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", text) + re.findall(
            r"@import\s+['\"]([^'\"]+)", text
        )
        loads += [f"{css.relative_to(site)}: {u}" for u in urls if remote(u)]
    assert not loads, "resources from another host:\n" + "\n".join(loads)
    # the reproduction's plots and the benchmarks' tables come along (docs/hooks.py)
    assert (site / "results" / "walkthrough.png").is_file()
    assert (site / "benchmarks" / "peers" / "index.html").is_file()


def test_remote_tells_hosts_apart() -> None:
    assert remote("https://fonts.googleapis.com/css") and remote("//cdn.example.org/x.js")
    assert not remote("assets/x.js") and not remote("http://127.0.0.1:8000/")
    assert not remote("data:image/svg+xml,<svg xmlns='http://www.w3.org/2000/svg'/>")


def guide_answers(live: LiveServer, site: Path, paths: list[str]) -> list[httpx.Response]:
    """The demo page's link to the documentation, then `paths` below it, from the app as
    `create_app` builds it where the site is at `site` (in process: no second server)."""
    from service.http import app as http_app

    async def fetch() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://demo", verify=TLS
        ) as client:
            links = re.findall(r'<a href="(/guide/[^"]*)"', (await client.get("/")).text)
            assert links, "the demo page links to the documentation"
            return [await client.get(links[0] + path) for path in paths]

    original = http_app.SITE
    http_app.SITE = site
    try:
        app = http_app.create_app(live.settings, live.server.plane)
    finally:
        http_app.SITE = original
    return asyncio.run(fetch())


def test_the_demo_page_links_to_the_built_site(site: Path, live: LiveServer) -> None:
    index, settings, listing = guide_answers(live, site, ["", "settings/", "assets/stylesheets/"])
    assert index.status_code == 200 and "CoordConv serving" in index.text
    assert settings.status_code == 200 and "COORDCONV_MAX_BATCH_SIZE" in settings.text
    assert listing.status_code == 404  # a folder without a page: no listing
    css = re.search(r'href="(assets/stylesheets/[^"]+\.css)"', index.text)
    assert css is not None
    (style,) = guide_answers(live, site, [css[1]])
    assert style.status_code == 200 and "text/css" in style.headers["content-type"]


def test_without_a_built_site_the_guide_is_a_clear_404(tmp_path: Path, live: LiveServer) -> None:
    for answer in guide_answers(live, tmp_path / "site", ["", "settings/"]):
        assert answer.status_code == 404, answer.request.url
        assert "make docs" in answer.json()["detail"], answer.text


def test_the_live_server_serves_the_guide_where_this_checkout_has_it(live: LiveServer) -> None:
    """The shipped app: /guide/ is the site `make docs` built, or the 404 that says so."""
    answer = httpx.get(f"{live.url}/guide/", timeout=30, verify=TLS)
    if (ROOT / "site" / "index.html").is_file():
        assert answer.status_code == 200
    else:
        assert answer.status_code == 404 and "make docs" in answer.text
