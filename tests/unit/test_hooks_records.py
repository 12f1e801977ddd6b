"""hooks.records: JSONL from untrusted hook output."""

import json

from hooks import parse_jsonl
from hooks.records import records_with_type


def test_one_object_per_line_blank_and_garbage_skipped():
    text = "\n".join(
        [
            "starting up...",
            '{"type": "Binary", "name": "wget"}',
            "",
            "   ",
            '  {"type": "ArchiveResult", "status": "succeeded"}  ',
            "{not json}",
            "[1, 2, 3]",
            "42",
            '"a string"',
            "null",
            '{"no_type": true}',
            "\x00\x01\x02 binary junk \xff",
        ]
    )
    assert parse_jsonl(text) == [
        {"type": "Binary", "name": "wget"},
        {"type": "ArchiveResult", "status": "succeeded"},
        {"no_type": True},
    ]


def test_empty_inputs():
    assert parse_jsonl("") == []
    assert parse_jsonl(None) == []
    assert parse_jsonl(b"") == []
    assert parse_jsonl("\n\n\n") == []


def test_partial_last_line_is_ignored():
    text = '{"type": "Binary", "name": "a"}\n{"type": "Binary", "na'
    assert parse_jsonl(text) == [{"type": "Binary", "name": "a"}]


def test_crlf_and_bytes_with_bad_utf8():
    data = b'{"type": "A"}\r\n\xff\xfe{"bad": 1}\r\n{"type": "B", "s": "caf\xc3\xa9"}\r\n'
    assert parse_jsonl(data) == [{"type": "A"}, {"type": "B", "s": "café"}]


def test_unicode_line_separators_inside_strings_do_not_split_a_record():
    record = {"type": "Note", "text": "a\u2028b\u2029c\x85d\x0ce"}
    line = json.dumps(record, ensure_ascii=False)
    assert parse_jsonl(line + "\n") == [record]


def test_two_objects_on_one_line_are_not_a_record():
    assert parse_jsonl('{"a": 1}{"b": 2}\n{"c": 3}') == [{"c": 3}]


def test_huge_lines():
    big = {"type": "Big", "blob": "x" * 2_000_000}
    assert parse_jsonl(json.dumps(big)) == [big]
    too_big = json.dumps({"type": "Big", "blob": "x" * 200})
    assert parse_jsonl(too_big + '\n{"type": "Small"}', max_line_chars=100) == [{"type": "Small"}]
    # A long garbage line costs nothing and breaks nothing.
    assert parse_jsonl("{" + "garbage" * 1_000_000 + '\n{"type": "After"}') == [{"type": "After"}]


def test_absurdly_deep_nesting_does_not_crash():
    deep = '{"a": ' * 100_000 + "1" + "}" * 100_000
    assert parse_jsonl(deep + '\n{"type": "Ok"}') == [{"type": "Ok"}]


def test_records_with_type_keeps_only_dispatchable_records():
    text = "\n".join(
        json.dumps(r)
        for r in [
            {"type": "Binary", "name": "a"},
            {"name": "no type"},
            {"type": ""},
            {"type": "   "},
            {"type": None},
            {"type": 3},
            {"type": ["Binary"]},
            {"type": "Process", "pid": 1},
        ]
    )
    assert records_with_type(text) == [{"type": "Binary", "name": "a"}, {"type": "Process", "pid": 1}]
