#!/bin/bash
# The Prometheus rules and the Grafana dashboard of memdedup-stat
# (tools/memdedup-stat/prometheus): promtool check rules, promtool test
# rules (each alert firing and not firing on series of its unit test),
# and the dashboard against the rules: every panel plots a plain series
# (a recorded one or one memdedup-stat exports; the expressions live in
# the rules), every series an alert looks at is on a panel, and every
# metric named anywhere is one memdedup-stat exports.
# Exit status 0 passed, 1 failed, 77 skipped (no promtool).
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
dir=$top/tools/memdedup-stat/prometheus
if ! command -v promtool >/dev/null; then
    echo "SKIP style/prometheus-rules: no promtool (make deps installs prometheus)"
    exit 77
fi
rc=0
if out=$(promtool check rules "$dir/memdedup-rules.yml" 2>&1); then
    echo "PASS style/promtool-check-rules: $(echo "$out" | grep -o '[0-9]* rules found')"
else
    echo "$out"
    echo "FAIL style/promtool-check-rules"
    rc=1
fi
if out=$(promtool test rules "$dir/memdedup-rules.test.yml" 2>&1); then
    echo "PASS style/promtool-test-rules"
else
    echo "$out"
    echo "FAIL style/promtool-test-rules"
    rc=1
fi
if python3 - "$dir" "$top/tools/memdedup-stat/memdedup-stat.c" <<'PY'
import json, os, re, sys

d, source = sys.argv[1], sys.argv[2]
exported = set(re.findall(r'"(memdedup_[a-z_]+)"', open(source).read()))
rules = open(os.path.join(d, "memdedup-rules.yml")).read()
recorded = set(re.findall(r"^\s*- record: (\S+)", rules, re.M))
name = r"memdedup[:_][a-z0-9_:]*"
# Alert expressions: the YAML block after "expr:" up to "for:" or
# "labels:" (PyYAML is not needed: the file's layout is fixed).
alert_exprs = re.findall(r"- alert: \S+\n\s+expr: (.*?)\n\s+(?:for|labels):",
                         rules, re.S)
dash = json.load(open(os.path.join(d, "memdedup-dashboard.json")))
panel_exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
bad = []
for e in panel_exprs:
    if not re.fullmatch(name, e) or e not in recorded | exported:
        bad.append("panel expression %r is not a recorded or exported "
                   "series" % e)
for e in alert_exprs:
    for n in re.findall(name, e):
        if n not in panel_exprs:
            bad.append("%s, which an alert looks at, is on no panel" % n)
for n in set(re.findall(name, rules)) - recorded - {"memdedup.rules",
                                                     "memdedup.alerts"}:
    if n not in exported:
        bad.append("the rules name %s, which memdedup-stat does not "
                   "export" % n)
if len(alert_exprs) != rules.count("- alert:"):
    bad.append("could not read every alert's expression")
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
PY
then
    echo "PASS style/prometheus-dashboard"
else
    echo "FAIL style/prometheus-dashboard"
    rc=1
fi
exit $rc
