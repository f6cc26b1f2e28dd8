"""Remote path rules: one normal form, every refusal named."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.paths import (
    MAX_PATH_BYTES,
    InvalidPath,
    is_at_or_below,
    normalize_path,
    normalize_prefix,
    path_bytes,
)


@pytest.mark.parametrize("text, normal", [
    ("a", "/a"),
    ("/a", "/a"),
    ("a/b", "/a/b"),
    ("/a/b/c.txt", "/a/b/c.txt"),
    ("/.hidden", "/.hidden"),
    ("/a/...", "/a/..."),
    ("/a/..b", "/a/..b"),
    ("/ a /b ", "/ a /b "),
    ("/dir\\name", "/dir\\name"),
    ("/été/日本", "/été/日本"),
])
def test_valid_paths_normalize(text: str, normal: str) -> None:
    assert normalize_path(text) == normal


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("/", "empty segment"),
    ("//", "empty segment"),
    ("//a", "empty segment"),
    ("/a//b", "empty segment"),
    ("a/", "empty segment"),
    ("/a/b/", "empty segment"),
    (".", "'.'"),
    ("/a/./b", "'.'"),
    ("..", "'..'"),
    ("/a/../b", "'..'"),
    ("/a/..", "'..'"),
    ("/a\x00b", "NUL"),
    ("\x00", "NUL"),
    ("/a\udc80", "Unicode"),
])
def test_invalid_paths_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidPath, match=reason) as info:
        normalize_path(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [None, b"/a", 7, ["/a"], ("/a",)])
def test_non_text_is_refused(value: object) -> None:
    with pytest.raises(InvalidPath, match="text"):
        normalize_path(value)
    with pytest.raises(InvalidPath, match="text"):
        normalize_prefix(value)


def test_invalid_path_is_a_value_error() -> None:
    assert issubclass(InvalidPath, ValueError)


def test_length_limit_counts_utf8_bytes_after_the_leading_slash() -> None:
    assert MAX_PATH_BYTES == 4096
    longest = "/" + "a" * MAX_PATH_BYTES
    assert normalize_path(longest) == longest
    assert path_bytes(longest) == 4096
    # Without the leading slash the text is what is counted: the same normal form.
    assert normalize_path(longest[1:]) == longest
    with pytest.raises(InvalidPath, match="4097 bytes"):
        normalize_path("a" * (MAX_PATH_BYTES + 1))
    with pytest.raises(InvalidPath, match="4097 bytes"):
        normalize_path("/" + "a" * (MAX_PATH_BYTES + 1))


def test_length_limit_with_multibyte_characters() -> None:
    # "é" is 2 bytes, "日" 3, "😀" 4: 2*2047 + 2 = 4096 bytes, 2049 characters.
    fits = "/" + "é" * 2047 + "ab"
    assert path_bytes(fits) == MAX_PATH_BYTES
    assert normalize_path(fits) == fits
    over = "/" + "é" * 2048 + "a"
    assert len(over) < MAX_PATH_BYTES and path_bytes(over) == 4097
    with pytest.raises(InvalidPath, match="4097 bytes"):
        normalize_path(over)
    assert normalize_path("😀" * 1023 + "abcd") == "/" + "😀" * 1023 + "abcd"
    with pytest.raises(InvalidPath, match="4099 bytes"):
        normalize_path("/" + "😀" * 1024 + "日")


@pytest.mark.parametrize("text, normal", [
    ("", "/"), ("/", "/"), ("a", "/a"), ("/a/b", "/a/b"),
])
def test_prefixes(text: str, normal: str) -> None:
    assert normalize_prefix(text) == normal


@pytest.mark.parametrize("text", ["//", "a/", "/a/", "/a/../b", ".", "/a\x00"])
def test_invalid_prefixes(text: str) -> None:
    with pytest.raises(InvalidPath):
        normalize_prefix(text)


@pytest.mark.parametrize("path, prefix, expected", [
    ("/a", "/", True),
    ("/a/b/c", "/", True),
    ("/a", "/a", True),
    ("/a/b", "/a", True),
    ("/a/b/c", "/a", True),
    ("/a/b/c", "/a/b", True),
    ("/ab", "/a", False),
    ("/a-b", "/a", False),
    ("/a.txt", "/a", False),
    ("/b/a", "/a", False),
    ("/a", "/a/b", False),
])
def test_is_at_or_below(path: str, prefix: str, expected: bool) -> None:
    assert is_at_or_below(path, prefix) is expected


segments = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
                   min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@settings(max_examples=200, deadline=None)
@given(st.lists(segments, min_size=1, max_size=6), st.booleans())
def test_normal_form_is_a_fixed_point(parts: list[str], leading: bool) -> None:
    text = ("/" if leading else "") + "/".join(parts)
    normal = normalize_path(text)
    assert normal == "/" + "/".join(parts)
    assert normalize_path(normal) == normal
    assert normalize_prefix(normal) == normal
    assert is_at_or_below(normal, normal)
