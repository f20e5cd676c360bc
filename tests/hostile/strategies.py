"""Hypothesis strategies for hostile `/atlas-billing` texts: real sub-commands with odd arguments,
and arbitrary unicode, control characters, path and injection tricks, very long input."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from handlers.grammar import GROUP_BY
from handlers.subcommands import NAMES

HEX = "0123456789abcdef"

# Pieces that have broken parsers and URL builders elsewhere: path traversal and encoded
# separators, NUL and other controls, zero-width and bidi marks, lookalike digits, shell and
# SQL metacharacters, Slack entities, numbers Python parses but money should not.
TRICKS = (
    "../",
    "..",
    "/",
    "\\",
    "..\\",
    "%2F",
    "%2f",
    "..%2f",
    "%2e%2e%2f",
    "%252F",
    "%00",
    "?",
    "#",
    "?x=1",
    "#frag",
    "\x00",
    "\x1b[31m",
    "\x7f",
    "\r",
    "\u0085",
    "\u2028",
    "\u200b",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u202e",
    "\u2066",
    "\u061c",
    "\u00a0",
    "\u3000",
    "\u0301",
    "\U0001f4b8",
    "\U0001d7d8",
    "\U000e0041",
    "\uff10",
    "\u0661",
    "\u09e6",
    "ａ",
    "; rm -rf /",
    "$(id)",
    "`id`",
    "| cat /etc/passwd",
    "&& reboot",
    "> /dev/null",
    "' OR '1'='1",
    '"; DROP TABLE links; --',
    "%s%s%n",
    "{0.__class__}",
    "${jndi:ldap://x}",
    "<script>",
    "<@U123ABC|alice>",
    "<@U123ABC>",
    "<!subteam^S123ABC|@ops>",
    "<!channel>",
    "<!here>",
    "<#C123ABC|general>",
    "<https://evil.example/|click>",
    "<",
    ">",
    "&amp;",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "1e-9",
    "-0",
    "0x10",
    "1_000",
    "$5,000",
    "5,00,0",
    "٣",
    "²",
    "½",
)

WORDS = (
    "off",
    "on",
    "now",
    "last",
    "by",
    "services",
    "projects",
    "clusters",
    "organizations",
    "regions",
    "2024-01",
    "2024-01-01",
    "2024-01-15",
    "2024-13",
    "0000-01",
    "9999-12",
    "10000-01",
    "2024-1",
    "23:59",
    "24:00",
    "9:05",
    "09:5",
    "1",
    "31",
    "32",
    "0",
    "5000",
    "5000.50",
    "0.001",
    "100000001",
    "U123ABC",
    "S123ABC",
    "W123ABC",
    "u123abc",
    "payload",  # Bolt's parser takes any form body containing it for an interaction
    "payload=%7B%7D",
)


def _cased(words: tuple[str, ...]) -> st.SearchStrategy[str]:
    # A tuple and a map rather than a flatmap: flatmap is slow to generate and to shrink.
    cases: st.SearchStrategy[Callable[[str], str]] = st.sampled_from(
        [str, str.upper, str.title, str.swapcase]
    )
    return st.tuples(st.sampled_from(words), cases).map(lambda wc: wc[1](wc[0]))


hex24 = st.binary(min_size=12, max_size=12).map(bytes.hex)
near_hex = st.one_of(
    st.text(HEX, min_size=0, max_size=30),
    hex24.map(str.upper),
    hex24.map(lambda h: h + "\n"),
    hex24.map(lambda h: "\n" + h),
    st.text("0123456789abcdefABCDEFghxyz", min_size=24, max_size=24),
)


def _splice(parts: tuple[str, int, str]) -> str:
    base, at, trick = parts
    at = min(at, len(base))
    return base[:at] + trick + base[at:]


# A valid-looking ID or word with a trick pasted into it.
spliced = st.tuples(
    st.one_of(hex24, st.sampled_from(WORDS)), st.integers(0, 24), st.sampled_from(TRICKS)
).map(_splice)


def tokens(chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        hex24,
        near_hex,
        spliced,
        st.sampled_from(TRICKS),
        _cased(WORDS),
        st.text(chars, min_size=1, max_size=30),
        st.integers(-(10**30), 10**30).map(str),
        st.floats().map(str),
    )


SEPARATORS = st.sampled_from([" ", "  ", "\t", "\n", "\r\n", " \u00a0", "\u3000", "\u2003"])


def _join(parts: tuple[str, list[tuple[str, str]], int]) -> str:
    first, rest, how = parts
    text = first + "".join(word + separator for word, separator in rest)
    return (text, text.strip(), " " + text)[how]


def _long(parts: tuple[str, str, int]) -> str:
    name, piece, size = parts
    text = name + " " + piece * (size // max(len(piece), 1) + 1)
    return text[:size]


def _forms(hostile: st.SearchStrategy[str], ids: tuple[str, ...]) -> st.SearchStrategy[str]:
    """The usage forms with each argument valid most of the time and hostile otherwise."""
    some_id = st.one_of(hex24, st.sampled_from(ids), st.sampled_from(ids)) if ids else hex24

    def arg(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(valid, valid, valid, hostile)

    def optional(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(st.just(""), arg(valid))

    org = arg(some_id)

    def months(parts: tuple[int, int, str, str]) -> str:
        start, span, start_day, end_day = parts
        end = start + span
        return (
            f"{start // 12:04d}-{start % 12 + 1:02d}{start_day} "
            f"{end // 12:04d}-{end % 12 + 1:02d}{end_day}"
        )

    # Mostly a valid range (END after START, at most a year), sometimes not.
    days = st.sampled_from(["", "", "-01"])
    span = st.tuples(st.integers(2023 * 12, 2027 * 12), st.integers(-1, 13), days, days).map(months)
    by = st.sampled_from(GROUP_BY).map(lambda dim: f"by {dim}")
    amount = st.one_of(
        st.integers(1, 10**9).map(str),
        st.integers(1, 10**7).map(lambda n: f"${n:,}"),
        st.integers(1, 10**9).map(lambda n: f"{n // 100}.{n % 100:02d}"),
        st.just("off"),
    )
    mention = st.one_of(
        st.sampled_from(["<@U123ABC|alice>", "<!subteam^S123ABC|@ops>", "W123ABC", "off"]),
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=2, max_size=19).map(
            lambda rest: "U" + rest
        ),
    )
    day = st.one_of(st.integers(1, 31).map(str), st.just("last"))
    clock = st.tuples(st.integers(0, 23), st.integers(0, 59)).map(
        lambda hm: f"{hm[0]:02d}:{hm[1]:02d}"
    )

    def form(name: str, *args: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.tuples(_cased((name,)), *args).map(lambda words: " ".join(w for w in words if w))

    return st.one_of(
        form("link", org),
        form("connect", org),
        form("unlink", org),
        form("pending", optional(some_id)),
        form("invoice", org, optional(some_id)),
        form(
            "costs",
            st.one_of(span, span, st.tuples(hostile, hostile).map(" ".join)),
            optional(by),
            optional(some_id),
        ),
        form("threshold", arg(amount), optional(some_id)),
        form("oncall", arg(mention)),
        form("digest", st.just("on"), optional(day), optional(clock)),
        form("digest", st.sampled_from(["off", "now"]), optional(some_id)),
        form("status"),
        form("help", optional(_cased(NAMES))),
    )


def command_texts(
    alphabet: st.SearchStrategy[str] | None = None, *, ids: tuple[str, ...] = ()
) -> st.SearchStrategy[str]:
    """A sub-command (or not) followed by hostile arguments, or arbitrary text, or long text.

    ``ids`` are real org and invoice IDs to use now and then, so that commands succeed too.

    Built once and reused: strategies made inside a draw are validated on every example.
    """
    chars = alphabet if alphabet is not None else st.characters()
    first = st.one_of(_cased(NAMES), st.sampled_from(TRICKS))
    words = st.lists(st.tuples(tokens(chars), SEPARATORS), max_size=6)
    sub_command = st.tuples(first, words, st.integers(0, 2)).map(_join)
    free = st.text(chars, max_size=80)
    piece = st.one_of(st.sampled_from(TRICKS), hex24, st.text(chars, min_size=1, max_size=5))
    long = st.tuples(_cased(NAMES), piece, st.sampled_from([1999, 2000, 2001, 2500, 4000])).map(
        _long
    )
    return st.one_of(
        _forms(tokens(chars), ids), _forms(tokens(chars), ids), sub_command, free, long
    )
