"""The Markdown reports (``--report FILE``'s run.md, ``--report-dir``'s index.md) show what inputs, models
and servers wrote as text: one table row a line whatever an error holds, and no raw HTML (Markdown
renderers pass it through; index.html escapes it)."""

from __future__ import annotations

import re

from reallod.agent.realign import RealignOptions, realign
from reallod.agent.run_report import md_code, md_text
from reallod.llm.backends.base import BackendError
from tests.agent.io_helpers import pair, record, write_image, write_jsonl
from tests.agent.scripted import plan, reflect, rewrite, scripted_roles

SERVER_ERROR = ("1 validation error for ChatCompletionRequest\nmessages.0.content\n"
                "| injected | row |\n<script>alert('server')</script>")


def _script(role, messages):
    text = str(messages[-1]["content"])
    if role == "reflector":
        if "fail me" in text:
            return BackendError(SERVER_ERROR)
        return reflect("wrong", feedback="<b>bold</b>\n# not a heading")
    if role == "planner":
        return plan("wrong", reason="<img src=x onerror=alert(3)>")
    return rewrite("<script>alert('rw')</script> [a](javascript:alert(4))")


def test_reports_keep_table_rows_whole_and_write_no_raw_html(tmp_path):
    write_image(tmp_path / "a.png")
    src = write_jsonl(tmp_path / "in.jsonl", [
        record("a.png", {"s": [pair([[1, 1, 20, 20]], "<img src=x onerror=alert(1)>",
                                    ["<script>alert('expr')</script>"])]}),
        record("a.png", {"s|`x`": [pair([[1, 1, 20, 20]], "cup", ["fail me"])]})])
    run = realign(RealignOptions(input=src, config="scripted", out=tmp_path / "out.jsonl", images=tmp_path,
                                 max_cycles=2, no_cache=True, report=tmp_path / "run", report_dir=tmp_path / "rep"),
                  roles=scripted_roles(_script, vlm=False))
    assert run.summary.verdicts["failed"] == 1
    run_md = (tmp_path / "run.md").read_text()
    rows = [line for line in run_md.splitlines() if line.startswith("| backend_error |")]
    assert len(rows) == 1 and "injected" in rows[0] and "alert(&#x27;server&#x27;)" not in rows[0]
    assert rows[0].endswith(" |") and len(re.findall(r"(?<!\\)\|", rows[0])) == 4  # 3 cells, no split
    assert "``1/s|`x`/0/0``" not in rows[0] and r"``1/s\|`x`/0/0``" in rows[0]
    index_md = (tmp_path / "rep" / "index.md").read_text()
    for md in (run_md, index_md):
        assert not re.search(r"<(script|img|b)\b", md), md
        assert not any(line.startswith(("| injected", "# not a heading", "<")) for line in md.splitlines())
    for shown in ("&lt;script&gt;alert('expr')&lt;/script&gt;", "&lt;img src=x onerror=alert(1)&gt;",
                  "&lt;b&gt;bold&lt;/b&gt; # not a heading", r"\[a\](javascript:alert(4))"):
        assert shown in index_md, shown
    assert "&lt;script&gt;alert('server')&lt;/script&gt;" in run_md


def test_md_text_and_md_code():
    assert md_text("a\n\n b  <i>&</i> | [x](y) \\ `c` **d**") == \
        r"a b &lt;i&gt;&amp;&lt;/i&gt; \| \[x\](y) \\ \`c\` \*\*d\*\*"
    assert md_code("0/s/1/0") == "`0/s/1/0`"
    assert md_code("a`b\n<c>") == "``a`b <c>``"
    assert md_code("`x``") == "``` `x`` ```"
