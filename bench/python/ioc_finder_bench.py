#!/usr/bin/env python3
"""Times ioc-finder over texts: reads JSON Lines with a "text" field (as written by
`threatmail corpus text` or the parse_throughput bench), runs ioc_finder.find_iocs on each text,
and prints one JSON object: {"types", "messages", "text_bytes", "seconds", "counts"}.

Usage: ioc_finder_bench.py TEXTS.jsonl [default|all]
  default: ioc-finder's default indicator types (as shipped);
  all:     the defaults plus ipv4_cidrs, ipv6_cidrs and sha512s (every type this project has).

Run it with the venv python from venv.sh (ioc-finder 9.4.1 from PyPI)."""

import json
import sys
import time

import ioc_finder

DEFAULT_TYPES = list(ioc_finder.ioc_finder.DEFAULT_IOC_TYPES)
# The defaults plus the three the project also extracts (CIDRs, SHA-512).
ALL_TYPES = DEFAULT_TYPES + ["ipv4_cidrs", "ipv6_cidrs", "sha512s"]


def main() -> None:
    path = sys.argv[1]
    which = sys.argv[2] if len(sys.argv) > 2 else "default"
    types = {"default": DEFAULT_TYPES, "all": ALL_TYPES}[which]
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    counts = {}
    started = time.perf_counter()
    for text in texts:
        found = ioc_finder.find_iocs(text, included_ioc_types=types)
        for key, values in found.items():
            counts[key] = counts.get(key, 0) + len(values)
    seconds = time.perf_counter() - started
    json.dump(
        {
            "types": which,
            "messages": len(texts),
            "text_bytes": sum(len(t.encode("utf-8")) for t in texts),
            "seconds": seconds,
            "counts": counts,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
