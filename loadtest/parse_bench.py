"""Micro-benchmark of the client stream parser (`server.xmpp.parser`): the normal path and
the hostile inputs of issue #19 (endless tags, large stream headers).

    python -m presence_ha.loadtest.parse_bench [--stanzas N] [--rounds R] [--compare PATH]

`--compare PATH` loads another version of the parser module from a file (for example
`git show main:server/xmpp/parser.py > /tmp/old_parser.py`) and measures both in the
same process, rounds interleaved, so their ratio is not skewed by a busy machine.
Figures are CPU time (time.process_time) per stanza or per attack; every round is
printed, then the median.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from presence_ha.server.xmpp import parser as current

HEADER = (b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
          b" to='example.test' version='1.0'>")
# 16 declarations of long URIs: the largest header the default limits let in (~3.8 kB)
BIG_HEADER = HEADER.replace(b" to=", b"".join(b" xmlns:n%d='urn:%s%d'" % (i, b"u" * 200, i) for i in range(14))
                            + b" to=", 1)
STANZA = (b"<message to='bob@example.test/phone' from='alice@example.test/laptop' type='chat' id='m%d'>"
          b"<body>Hello Bob, this is message number %d of the benchmark.</body>"
          b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
MAX_STANZA = 256 * 1024


def _parser(module: ModuleType) -> Any:
    """A parser as an authenticated stream has it (the defaults of `StreamSettings`)."""
    limits = getattr(module, "ParserLimits", None)  # older versions have no limits
    if limits is None:
        return module.StreamParser(MAX_STANZA)
    return module.StreamParser(MAX_STANZA, limits(tag_bytes=16 * 1024))


def per_read(module: ModuleType, stanzas: int, header: bytes = HEADER) -> float:
    """µs of CPU per stanza, each stanza its own read (an idle session's path)."""
    parser = _parser(module)
    parser.feed(header)
    data = [STANZA % (i, i) + b"\n" for i in range(stanzas)]
    started = time.process_time()
    for piece in data:
        parser.feed(piece)
    return (time.process_time() - started) / stanzas * 1e6


def batched(module: ModuleType, stanzas: int) -> float:
    """µs of CPU per stanza, stanzas arriving in 64 kB reads (a busy session's path)."""
    parser = _parser(module)
    parser.feed(HEADER)
    data = b"".join(STANZA % (i, i) for i in range(stanzas))
    started = time.process_time()
    for start in range(0, len(data), 65536):
        parser.feed(data[start : start + 65536])
    return (time.process_time() - started) / stanzas * 1e6


def endless_tag(module: ModuleType, read: int, filler: bytes, total: int = 256 * 1024) -> float:
    """ms of CPU an endless start tag costs, in reads of `read` bytes, until the parser
    refuses it or `total` bytes were sent."""
    parser = _parser(module)
    parser.feed(HEADER)
    parser.feed(b"<message a='")
    piece = (filler * (read // len(filler) + 1))[:read]
    started = time.process_time()
    for _ in range(total // read):
        parser.feed(piece)
        if parser.dead:
            break
    return (time.process_time() - started) * 1e3


def scenarios(stanzas: int) -> dict[str, Callable[[ModuleType], float]]:
    return {
        "per-read us/stanza": lambda m: per_read(m, stanzas),
        "batched us/stanza": lambda m: batched(m, stanzas),
        "per-read, 3.8 kB header us/stanza": lambda m: per_read(m, stanzas, BIG_HEADER),
        "endless tag 1 kB reads ms": lambda m: endless_tag(m, 1024, b"x"),
        "endless tag 1 kB reads with '>' ms": lambda m: endless_tag(m, 1024, b"x>"),
        "endless tag 64 B reads with '>' ms": lambda m: endless_tag(m, 64, b"x>", 64 * 1024),
    }


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("compared_parser", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--stanzas", type=int, default=5000)
    args.add_argument("--rounds", type=int, default=5)
    args.add_argument("--compare", metavar="PATH", help="another parser module to measure beside this one")
    opts = args.parse_args(argv)
    modules = {"current": current}
    if opts.compare:
        modules["compared"] = load(opts.compare)
    for name, scenario in scenarios(opts.stanzas).items():
        runs: dict[str, list[float]] = {label: [] for label in modules}
        for _ in range(opts.rounds):
            for label, module in modules.items():
                runs[label].append(scenario(module))
        line = "; ".join(f"{label} median {statistics.median(v):.2f} runs {[round(x, 2) for x in v]}"
                         for label, v in runs.items())
        ratio = ""
        if "compared" in runs:
            ratio = f"; current/compared {statistics.median(runs['current']) / statistics.median(runs['compared']):.2f}"
        print(f"{name}: {line}{ratio}", flush=True)


if __name__ == "__main__":
    main()
