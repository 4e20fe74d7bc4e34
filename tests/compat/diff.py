#!/usr/bin/env python3
"""Compare two runs of a driver test suite: one direct to the primary, one through pgsplit.

Usage:
  diff.py compare SUITE DIRECT PGSPLIT   counts per run, then the tests whose outcome differs
  diff.py node-results LOGDIR            node-postgres per-file logs -> result lines (stdout)

DIRECT and PGSPLIT are JUnit XML files (*.xml) or result-line files: one test a line,
`PASS name`, `FAIL name: message`, `ERROR name: message` or `SKIP name[: reason]`.
Standard library only.
"""

import os
import re
import sys
import xml.etree.ElementTree as ET

OUTCOMES = ("passed", "failed", "errors", "skipped")


def first_line(text):
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return ""


def load_junit(path):
    """{test id: (outcome, first line of message)} from a JUnit XML file."""
    results = {}
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        print(f"  cannot read {path}: {e}")
        return results
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                message = first_line(child.get("message")) or first_line(child.text)
                break
        # A test can appear twice (e.g. a failure in the call and an error in teardown):
        # keep the worst outcome.
        if name in results and results[name][0] in ("failed", "errors"):
            continue
        results[name] = (outcome, message)
    return results


LINE_RE = re.compile(r"^(PASS|FAIL|ERROR|SKIP) (.*?)(?:: (.*))?$")


def load_lines(path):
    results = {}
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError as e:
        print(f"  cannot read {path}: {e}")
        return results
    for line in text.splitlines():
        m = LINE_RE.match(line.rstrip())
        if not m:
            continue
        kind, name, message = m.group(1), m.group(2), m.group(3) or ""
        outcome = {"PASS": "passed", "FAIL": "failed", "ERROR": "errors", "SKIP": "skipped"}[kind]
        results[name] = (outcome, first_line(message))
    return results


def load(path):
    return load_junit(path) if path.endswith(".xml") else load_lines(path)


def counts(results):
    c = dict.fromkeys(OUTCOMES, 0)
    for outcome, _ in results.values():
        c[outcome] += 1
    return c


def bad(outcome):
    return outcome in ("failed", "errors")


def compare(suite, direct_path, proxy_path):
    direct, proxy = load(direct_path), load(proxy_path)
    print(f"== {suite}: results")
    print(f"  {'run':<8} {'total':>6} " + " ".join(f"{o:>8}" for o in OUTCOMES))
    for label, res in (("direct", direct), ("pgsplit", proxy)):
        c = counts(res)
        print(f"  {label:<8} {len(res):>6} " + " ".join(f"{c[o]:>8}" for o in OUTCOMES))

    only_proxy, only_direct, other = [], [], []
    for name in sorted(set(direct) | set(proxy)):
        d = direct.get(name, ("missing", ""))
        p = proxy.get(name, ("missing", ""))
        if d[0] == p[0]:
            continue
        if bad(p[0]) and not bad(d[0]):
            only_proxy.append((name, d, p))
        elif bad(d[0]) and not bad(p[0]):
            only_direct.append((name, d, p))
        else:
            other.append((name, d, p))

    def show(title, rows, msg_of):
        print(f"\n== {suite}: {title} ({len(rows)})")
        for name, d, p in rows:
            print(f"  {name}  [direct={d[0]} pgsplit={p[0]}]")
            msg = msg_of(d, p)
            if msg:
                print(f"      {msg}")

    show("only fails through pgsplit", only_proxy, lambda d, p: p[1])
    show("only fails direct", only_direct, lambda d, p: d[1])
    show(
        "other differences (skipped/missing/passed vs each other, or failed/errored both ways)",
        other,
        lambda d, p: " | ".join(x for x in (d[1] and f"direct: {d[1]}", p[1] and f"pgsplit: {p[1]}") if x),
    )
    return 0


PASS_RE = re.compile(r"^  (.*) ✔$")
SKIP_RE = re.compile(r"^  (.*) \? - SKIPPED$")
FAIL_RE = re.compile(r"^  (.*) FAILED!$")
STARTED_RE = re.compile(r"^  (\S.*?) $")
DIED_RE = re.compile(r"^  (\S.*?) Message: (.*)$")


def node_results(logdir):
    """node-postgres' runner prints `  name ✔`, `  name ? - SKIPPED` or `  name FAILED!` and
    the stack, and stops the file at its first failure. Each file also gets a `file::(exit)`
    entry: PASS when node exited 0."""
    for fname in sorted(os.listdir(logdir)):
        if not fname.endswith(".log"):
            continue
        test_file = fname[: -len(".log")].replace("__", "/")
        text = open(os.path.join(logdir, fname), encoding="utf-8", errors="replace").read()
        lines = text.splitlines()
        rc_path = os.path.join(logdir, fname[: -len(".log")] + ".rc")
        rc = open(rc_path).read().strip() if os.path.exists(rc_path) else "?"
        for i, line in enumerate(lines):
            if m := PASS_RE.match(line):
                print(f"PASS {test_file}::{m.group(1)}")
            elif m := SKIP_RE.match(line):
                print(f"SKIP {test_file}::{m.group(1)}")
            elif m := FAIL_RE.match(line):
                msg = next((l.strip() for l in lines[i + 1 :] if l.strip()), "")
                print(f"FAIL {test_file}::{m.group(1)}: {msg}")
            elif m := STARTED_RE.match(line):
                # Started, never finished: the next line says why (suite.js' timeout).
                msg = next((l.strip() for l in lines[i + 1 :] if l.strip()), "")
                print(f"FAIL {test_file}::{m.group(1)}: {msg}")
            elif m := DIED_RE.match(line):
                # An uncaught exception in the middle of a test: test-helper.js prints
                # `Message: ...` right after the test's name, then node exits.
                print(f"FAIL {test_file}::{m.group(1)}: Message: {m.group(2)}")
        if rc == "0":
            print(f"PASS {test_file}::(exit)")
        else:
            # The last non-empty line that looks like an error, else the last line.
            errs = [l.strip() for l in lines if re.search(r"Error|error:|Message:", l)]
            last = errs[0] if errs else next((l.strip() for l in reversed(lines) if l.strip()), "")
            what = "timed out" if rc in ("124", "137") else f"exit {rc}"
            print(f"FAIL {test_file}::(exit): {what}: {last}")


def main(argv):
    if len(argv) == 5 and argv[1] == "compare":
        return compare(argv[2], argv[3], argv[4])
    if len(argv) == 3 and argv[1] == "node-results":
        node_results(argv[2])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
