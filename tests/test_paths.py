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


def test_length_limit_counts_utf8_bytes_of_the_normal_form() -> None:
    longest = "/" + "a" * (MAX_PATH_BYTES - 1)
    assert normalize_path(longest) == longest
    # Without the leading slash the text is one character shorter, but its
    # normal form is the same length: the limit applies to the normal form.
    assert normalize_path(longest[1:]) == longest
    with pytest.raises(InvalidPath, match="1025 bytes"):
        normalize_path("a" * MAX_PATH_BYTES)
    with pytest.raises(InvalidPath, match="1025 bytes"):
        normalize_path("/" + "a" * MAX_PATH_BYTES)


def test_length_limit_with_multibyte_characters() -> None:
    # "é" is 2 bytes, "日" 3, "😀" 4: 1 + 2*511 + 1 = 1024 bytes, 513 characters.
    fits = "/" + "é" * 511 + "a"
    assert len(fits.encode()) == MAX_PATH_BYTES
    assert normalize_path(fits) == fits
    over = "/" + "é" * 512
    assert len(over) < MAX_PATH_BYTES and len(over.encode()) == 1025
    with pytest.raises(InvalidPath, match="1025 bytes"):
        normalize_path(over)
    assert normalize_path("/" + "😀" * 255 + "abc") == "/" + "😀" * 255 + "abc"
    with pytest.raises(InvalidPath, match="1028 bytes"):
        normalize_path("/" + "😀" * 256 + "日")


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
