"""The test-side Go template evaluator against outputs fixed by Go's text/template documentation."""

from __future__ import annotations

import pytest

from tests.integrations.go_template import TemplateError, render


@pytest.mark.parametrize(
    ("template", "data", "expected"),
    [
        ("a {{- \n  .X -}}  \n b", {"X": "x"}, "axb"),  # trim markers eat all adjacent white space
        ("a {{.X}} b", {"X": "x"}, "a x b"),
        ("{{ range .L }}[{{ . }}]{{ else }}none{{ end }}", {"L": []}, "none"),
        ("{{ range $i, $v := .L }}{{ $i }}={{ $v }};{{ end }}", {"L": ["p", "q"]}, "0=p;1=q;"),
        (
            "{{ range $i, $_ := .M }}{{ $last := eq (len (slice $.M $i)) 1 }}{{ if $last }}L{{ else }}.{{ end }}{{ end }}",
            {"M": [1, 2, 3]},
            "..L",
        ),
        ('{{ if eq .R "a" }}A{{ else if eq .R "b" }}B{{ else }}C{{ end }}', {"R": "b"}, "B"),
        ('{{ if and .X (ne .R "a") }}yes{{ end }}', {"X": "", "R": "b"}, ""),  # "" is false
        ('{{ "line\\n" }}', {}, "line\n"),
        ("{{/* a comment */}}x", {}, "x"),
        (
            "{{ .Missing }}",
            {},
            "",
        ),  # a missing map key prints nothing (Go prints <no value> for nil interfaces; Ollama's data is a struct)
    ],
)
def test_documented_behaviour(template: str, data: object, expected: str) -> None:
    assert render(template, data) == expected


@pytest.mark.parametrize(
    "template", ["{{ if .X }}", "{{ end }}", "{{ with .X }}{{ end }}", "{{ .X | printf }}"]
)
def test_outside_the_subset_or_malformed_raises(template: str) -> None:
    with pytest.raises(TemplateError):
        render(template, {"X": 1})
