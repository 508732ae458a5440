"""Reading damaged or Windows-written inputs: a gzip stream corrupt in the middle of a member gives
every line decoded before the bad byte, as ``zcat`` does; a UTF-8 byte-order mark is read past."""

from __future__ import annotations

import gzip
import json
import zlib

import orjson
import pytest

from reallod.agent.inputs import detect_format, iter_tasks, load_captions
from reallod.data import read_records
from reallod.data.io import iter_lines, read_whole
from reallod.data.validate import validate_file
from reallod.errors import DataError
from tests.agent.io_helpers import EXAMPLES
from tests.cli_helpers import run_cli

BOM = b"\xef\xbb\xbf"  # what Notepad and PowerShell put first


def jsonl(n: int) -> bytes:
    """Deterministic lines that compress about 6:1, so a few hundred KB of gzip hold many 64 KiB reads."""
    return b"".join(b'{"i": %d, "h": "%08x", "pad": "%s"}\n' % (i, zlib.crc32(b"%d" % i), b"ab" * (i % 13))
                    for i in range(n))


def with_bad_block(head: bytes, tail: bytes) -> bytes:
    """One gzip member: ``head``, then a block header of the reserved type (zlib: "invalid block type")."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)  # ends byte-aligned at a block boundary
    return first + b"\x07" + c.compress(tail) + c.flush()  # 0x07: last block, type 3


def bytewise(data: bytes) -> bytes:
    """What a decompressor fed one byte at a time outputs before the stream breaks (zcat's output)."""
    d, out = zlib.decompressobj(wbits=31), bytearray()
    for i in range(len(data)):
        try:
            out += d.decompress(data[i:i + 1])
        except zlib.error:
            break
    return bytes(out)


def read_until_error(path) -> tuple[list[bytes], str]:
    seen: list[bytes] = []
    with pytest.raises(DataError) as e:
        for _, line in iter_lines(path):
            seen.append(line)
    return seen, str(e.value)


@pytest.mark.parametrize("lines, cut", [(300, 40), (20_000, 17), (20_000, 0)])  # first read, a later one
def test_a_bad_block_mid_member_keeps_every_line_before_it(tmp_path, lines, cut):
    """zlib drops the whole output of a failing call: the lines decoded before the bad byte in the
    same 64 KiB of input were lost, and nothing at all came out of a file broken in its first 64 KiB."""
    body = jsonl(lines + 10)
    head = body[: len(jsonl(lines)) - cut]  # cut > 0: the break falls inside a line
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(with_bad_block(head, body[len(head):]))
    seen, message = read_until_error(path)
    complete = head.count(b"\n")
    assert seen == head.split(b"\n")[:complete]
    assert message.startswith(f"{path}: gzip stream is corrupt or truncated after line {complete} (")
    assert "invalid block type" in message


@pytest.mark.parametrize("where", [0.3, 0.6, -6])  # a byte of the data (fraction of it) or of the CRC
def test_a_flipped_byte_gives_what_zcat_gives(tmp_path, where):
    data = bytearray(gzip.compress(jsonl(40_000), mtime=0))
    at = int(len(data) * where) if where > 0 else len(data) + where
    data[at] ^= 0x5A
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(bytes(data))
    decoded = bytewise(bytes(data))
    complete = decoded.count(b"\n")
    seen, message = read_until_error(path)
    assert [ln for ln in decoded.split(b"\n")[:complete] if ln.strip()] == seen
    assert f"truncated after line {complete} (" in message


def test_validate_fix_salvages_every_record_before_the_corruption(tmp_path):
    records = [{"filename": f"img/{i}.jpg", "height": 100, "width": 200,
                "pairs": {"llm": [{"bboxes": [[10, 10, 50, 60]], "category": "dog", "relation": "single",
                                   "positive_expressions": [f"dog number {i}"], "negative_expressions": []}]}}
               for i in range(20_000)]
    data = bytearray(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in records), mtime=0))
    data[-6] ^= 1  # the CRC: every record decodes, the stream is still corrupt
    path, out = tmp_path / "damaged.jsonl.gz", tmp_path / "clean.jsonl"
    path.write_bytes(bytes(data))
    issues = []
    report = validate_file(path, fix=out, on_issue=issues.append)
    assert [i.kind for i in issues] == ["read_error"]
    assert "incorrect data check" in issues[0].message
    assert report.records == report.written == len(records)
    assert [r.filename for r in read_records(out)] == [r["filename"] for r in records]


# ------------------------------------------------------------------------------- byte-order mark


@pytest.mark.parametrize("name", ["x.jsonl", "x.jsonl.gz"])
def test_a_bom_is_read_past_and_only_at_the_start(tmp_path, name):
    path = tmp_path / name

    def write(content: bytes) -> None:
        path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)

    write(BOM + b'{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_lines(path)) == [(1, b'{"a": 1}'), (3, b'{"a": 2}')]
    assert read_whole(path) == b'{"a": 1}\n\n{"a": 2}\n'
    assert next(iter_lines(path, keep_bom=True)) == (1, BOM + b'{"a": 1}')
    write(b'{"a": 1}\n' + BOM + b'{"a": 2}\n')  # one inside (files joined by cat) is kept: it is an error there
    assert list(iter_lines(path)) == [(1, b'{"a": 1}'), (2, BOM + b'{"a": 2}')]


@pytest.mark.parametrize("name", ["instances.json", "instances.json.gz"])
def test_from_coco_reads_a_json_with_a_bom(tmp_path, capsys, name):
    ann = tmp_path / name
    content = BOM + (EXAMPLES / "annotations.json").read_bytes()
    ann.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    code, out, err = run_cli(["data", "convert", "from-coco", ann, tmp_path / "s.jsonl"], capsys)
    assert code == 0, err
    assert "4 images read, 4 written" in out
    assert len(list(read_records(tmp_path / "s.jsonl"))) == 4


def test_agent_inputs_read_files_with_a_bom(tmp_path):
    """The agent refused a BOM with its own message; the readers now drop it, for both formats."""
    want = [t.task_id for t in iter_tasks(EXAMPLES / "realdata.jsonl")]
    for name in ("realdata.jsonl", "tasks.json"):
        path = tmp_path / name
        path.write_bytes(BOM + (EXAMPLES / name).read_bytes())
        assert detect_format(path) == detect_format(EXAMPLES / name)
        assert len(list(iter_tasks(path))) == len(want)
    assert [t.task_id for t in iter_tasks(tmp_path / "realdata.jsonl")] == want
    caps = tmp_path / "caps.json"
    caps.write_bytes(BOM + json.dumps({"a.jpg": "a dog"}).encode())
    assert load_captions(caps) == {"a.jpg": "a dog"}
    caps.write_bytes(BOM + b'{"filename": "a.jpg", "caption": "a dog"}\n')
    assert load_captions(caps) == {"a.jpg": "a dog"}


@pytest.mark.parametrize("name", ["x.jsonl", "x.jsonl.gz"])
def test_validate_still_reports_a_bom_and_fix_drops_it(tmp_path, name):
    """reallod reads a BOM, other JSON readers refuse it: validate reports it the same, gzip or not."""
    line = orjson.dumps({"filename": "a.jpg", "height": 10, "width": 10, "pairs": {}}) + b"\n"
    content = BOM + line + line
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    issues = []
    report = validate_file(path, fix=tmp_path / "out.jsonl", on_issue=issues.append)
    assert [(i.line, i.kind) for i in issues] == [(1, "bom")]
    assert report.written == 2 and not (tmp_path / "out.jsonl").read_bytes().startswith(BOM)


@pytest.mark.parametrize("workers", [1, 2])
def test_stats_read_past_a_bom_in_a_plain_file_split_over_workers(tmp_path, workers):
    """``data stats`` reads plain files in byte ranges (not through iter_lines): the first range drops it."""
    from reallod.data.stats import file_stats

    path = tmp_path / "x.jsonl"
    path.write_bytes(BOM + (EXAMPLES / "realdata.jsonl").read_bytes() * 40)
    stats = file_stats(path, workers=workers, chunk_bytes=4096)
    assert stats.bad_lines == 0 and stats.images == file_stats(EXAMPLES / "realdata.jsonl").images * 40 > 0


def test_engine_reads_a_coco_json_with_a_bom(tmp_path):
    from reallod.engine.annotations import read_annotations

    ann = tmp_path / "annotations.json"
    ann.write_bytes(BOM + (EXAMPLES / "annotations.json").read_bytes())
    assert len(read_annotations(ann, EXAMPLES / "images").images) == 4
