#!/usr/bin/env python3
"""Runs our extractor and PyPI ioc-finder 9.4.1 over the same decoded text of a corpus and
prints per-type counts and the differences, grouped by kind.

    bench/python/compare_ioc_finder.py [--threatmail BIN] [--examples N] [--json OUT] DIR...

The text of each message is what `threatmail corpus text` prints: the decoded in-scope texts
our scanners read (subjects, text parts, HTML visible text and href/src/action values, text
attachments, originator headers of attached messages), joined by newlines, together with what
our extractor finds in exactly that joined text. ioc-finder gets the same string, with its
default settings plus the types it does not run by default but this project extracts
(ipv4_cidrs, ipv6_cidrs, sha512s).

The script makes target/bench-venv (bench/python/venv.sh) and re-runs itself there. Nothing is
fetched: the corpus is read in place, and only bytes are parsed.
"""

import argparse
import collections
import ipaddress
import json
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

TYPES = ["urls", "domains", "ipv4", "ipv6", "cidrs", "emails", "md5", "sha1", "sha256", "sha512", "cves"]

FILE_EXTENSIONS = set(
    "doc docx docm xls xlsx xlsm ppt pptx pdf rtf txt csv md log xml json ics eml msg htm html "
    "php asp aspx js exe dll scr msi lnk bat cmd ps1 vbs hta jar py pl sh zip rar 7z gz tar cab "
    "iso img png jpg jpeg gif svg mov mp4 one pub bin dat".split()
)
AV_HINT = re.compile(r"(?i)(trojan|backdoor|worm|virus|w32|win32|heur|pua|o97m|agent|generic)")


def ensure_venv():
    try:
        import ioc_finder  # noqa: F401
    except ImportError:
        python = subprocess.run(
            ["bash", os.path.join(ROOT, "bench", "python", "venv.sh")],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        os.execv(python, [python] + sys.argv)


def their_sets(found):
    def lower(values):
        return {v.lower() for v in values}

    def v6(values):
        out = set()
        for v in values:
            try:
                out.add(ipaddress.IPv6Address(v).compressed)
            except ValueError:
                out.add(v.lower())
        return out

    def nets(values):
        out = set()
        for v in values:
            try:
                out.add(ipaddress.ip_network(v, strict=False).with_prefixlen)
            except ValueError:
                out.add(v.lower())
        return out

    def emails(values):
        out = set()
        for v in values:
            local, _, domain = v.rpartition("@")
            out.add(f"{local}@{domain.lower()}")
        return out

    return {
        "urls": set(found.get("urls", [])),
        "domains": lower(found.get("domains", [])),
        "ipv4": set(found.get("ipv4s", [])),
        "ipv6": v6(found.get("ipv6s", [])),
        "cidrs": nets(list(found.get("ipv4_cidrs", [])) + list(found.get("ipv6_cidrs", []))),
        "emails": emails(found.get("email_addresses", [])),
        "md5": lower(found.get("md5s", [])),
        "sha1": lower(found.get("sha1s", [])),
        "sha256": lower(found.get("sha256s", [])),
        "sha512": lower(found.get("sha512s", [])),
        "cves": {v.upper() for v in found.get("cves", [])},
    }


def host_of(url):
    m = re.match(r"(?i)[a-z]+://(?:[^/@?#]*@)?(\[[^\]]*\]|[^/:?#]*)", url)
    return m.group(1).lower() if m else ""


def classify_theirs(kind, value, text, ours, theirs):
    """Why ioc-finder reports a value we do not."""
    our_urls = ours["urls"]
    lower_text = text.lower()
    encoded = value.lower().replace("@", "%40")
    in_their_url = any(
        (value.lower() in u.lower() or encoded in u.lower()) and value.lower() != host_of(u)
        for u in theirs["urls"]
        if u != value
    )
    if kind == "domains":
        if value.endswith("safelinks.protection.outlook.com") or value == "outlook.com":
            return "Safe Links wrapper host (we unwrap)"
        if value.rsplit(".", 1)[-1] in FILE_EXTENSIONS:
            return "file name read as a domain"
        if re.search(re.escape(value) + r"(@|\[at\]|\(at\)|\[@\])", lower_text) and not re.search(
            r"(?<![\w@.\-])" + re.escape(value) + r"(?![\w@\-])(?!\.\w)", lower_text.replace(value + "@", "")
        ):
            return "local part of an email address"
        if in_their_url or any(value in u.lower() and value != host_of(u) for u in our_urls):
            return "taken from inside a URL (path, query or wrapper)"
        idn = re.search(r"[^\x00-\x7f]" + re.escape(value), lower_text)
        if idn:
            return "fragment of an IDN (cut at the first non-ASCII letter)"
        idx = lower_text.find(value)
        if idx > 0 and lower_text[idx - 1] in "/" or AV_HINT.search(text[max(0, idx - 30): idx + len(value) + 5] if idx >= 0 else ""):
            return "AV verdict or path token"
        if any(d.endswith("." + value) or d.endswith(value) and d != value for d in ours["domains"]):
            return "fragment or parent of a domain we report (IDN, subdomain)"
        if idx < 0:
            return "not written in the text (derived)"
        return "other"
    if kind == "urls":
        if "safelinks.protection.outlook.com" in value:
            return "Safe Links wrapper (we unwrap)"
        if not re.match(r"(?i)https?://", value):
            return "not http/https, or scheme-less text given a scheme"
        if any(value.startswith(u) or u.startswith(value) for u in our_urls):
            return "URL boundary (trailing punctuation, brackets, quotes)"
        if value.lower() not in lower_text:
            return "normalised differently (case, refang, percent-decoding)"
        return "other"
    if kind in ("ipv4", "ipv6"):
        if any(c.split("/")[0] == value for c in ours["cidrs"]) or re.search(re.escape(value) + r"/\d", text):
            return "network address of a CIDR"
        if re.search(r"(?i)(\bv|version\s*|build\s*)" + re.escape(value), text):
            return "version number"
        if any(value in u for u in our_urls):
            return "inside a URL"
        return "other"
    if kind in ("md5", "sha1", "sha256", "sha512"):
        if in_their_url or any(value in u.lower() for u in our_urls):
            return "hex inside a URL"
        if re.search(r"(?i)[0-9a-z]" + re.escape(value) + r"|" + re.escape(value) + r"[0-9a-z]", lower_text):
            return "hex run touching other letters or digits (part of a longer token)"
        return "other"
    if kind == "emails":
        if "cid:" + value.lower() in lower_text:
            return "cid: content-id reference"
        if in_their_url or any(value.split("@")[0] in u for u in our_urls):
            return "inside a URL"
        return "other"
    return "other"


def classify_ours(kind, value, text, theirs):
    """Why we report a value ioc-finder does not."""
    lower_text = text.lower()
    if kind in ("cidrs", "sha512") and not theirs[kind]:
        pass
    if kind in ("domains", "urls", "emails", "ipv4", "cidrs") and value.lower() not in lower_text:
        if kind == "urls" and any(
            "safelinks.protection.outlook.com" in u for u in theirs["urls"]
        ):
            return "unwrapped from a Safe Links wrapper"
        if not value.isascii() or "xn--" in value:
            return "IDN (ioc-finder skips Unicode by default)"
        return "written defanged or percent-encoded in the text (we refang)"
    if "xn--" in value:
        return "IDN (ioc-finder skips Unicode by default)"
    if kind == "ipv6":
        return "IPv6 ioc-finder's grammar misses (bracketed, uncompressed, in a URL)"
    if kind == "urls":
        if any(u.startswith(value) or value.startswith(u) for u in theirs["urls"]):
            return "URL boundary (they keep or drop punctuation differently)"
        return "URL ioc-finder misses"
    if kind == "domains":
        if any(value == host_of(u) for u in theirs["urls"]):
            return "host of a URL they report but do not list as a domain"
        return "domain ioc-finder misses"
    return "other"


def short(value, width=70):
    return value if len(value) <= width else value[: width - 3] + "..."


def main():
    ensure_venv()
    import ioc_finder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--threatmail", default=None, help="the threatmail binary (default: target/release or target/debug)")
    parser.add_argument("--examples", type=int, default=3, help="examples printed per kind of difference")
    parser.add_argument("--json", help="write every difference to this file")
    args = parser.parse_args()

    binary = args.threatmail
    if binary is None:
        for profile in ("release", "debug"):
            candidate = os.path.join(ROOT, "target", profile, "threatmail")
            if os.path.exists(candidate):
                binary = candidate
                break
    if binary is None:
        sys.exit("build the CLI first: cargo build --release -p threatmail")

    lines = subprocess.run([binary, "corpus", "text", *args.dirs], check=True, capture_output=True, text=True).stdout
    types = list(ioc_finder.ioc_finder.DEFAULT_IOC_TYPES) + ["ipv4_cidrs", "ipv6_cidrs", "sha512s"]

    totals = {t: collections.Counter() for t in TYPES}
    kinds = collections.defaultdict(list)  # (side, type, kind) -> [(file, value)]
    messages = 0
    for line in lines.splitlines():
        record = json.loads(line)
        messages += 1
        text = record["text"]
        ours = {t: set(record["ours"][t]) for t in TYPES}
        theirs = their_sets(ioc_finder.find_iocs(text, included_ioc_types=types))
        name = os.path.basename(record["file"])
        for t in TYPES:
            both = ours[t] & theirs[t]
            totals[t]["ours"] += len(ours[t])
            totals[t]["theirs"] += len(theirs[t])
            totals[t]["both"] += len(both)
            only_theirs = theirs[t] - ours[t]
            only_ours = ours[t] - theirs[t]
            if t == "emails":
                # ioc-finder lower-cases the local part; we keep it as written (README rule 3).
                folded = {v.lower() for v in only_ours}
                case_only = {v for v in only_theirs if v.lower() in folded}
                for value in sorted(case_only):
                    kinds[("both (case)", t, "local part lower-cased by ioc-finder, kept as written by us")].append((name, value))
                only_theirs -= case_only
                only_ours = {v for v in only_ours if v.lower() not in {c.lower() for c in case_only}}
            for value in sorted(only_theirs):
                kinds[("only ioc-finder", t, classify_theirs(t, value, text, ours, theirs))].append((name, value))
            for value in sorted(only_ours):
                kinds[("only threatmail", t, classify_ours(t, value, text, theirs))].append((name, value))

    print(f"{messages} messages; the same decoded text given to both")
    print(f"{'type':8} {'threatmail':>10} {'ioc-finder':>10} {'both':>6} {'only ours':>9} {'only theirs':>11}")
    for t in TYPES:
        c = totals[t]
        print(f"{t:8} {c['ours']:>10} {c['theirs']:>10} {c['both']:>6} {c['ours'] - c['both']:>9} {c['theirs'] - c['both']:>11}")
    print()
    print("differences by kind:")
    for (side, t, kind), items in sorted(kinds.items(), key=lambda kv: (kv[0][0], kv[0][1], -len(kv[1]))):
        examples = ", ".join(f"{short(v)} ({f})" for f, v in items[: args.examples])
        print(f"  {side:15} {t:8} {len(items):5}  {kind}: {examples}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                [
                    {"side": side, "type": t, "kind": kind, "items": items}
                    for (side, t, kind), items in kinds.items()
                ],
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
