"""How each Sphinx directive of the Python docs is rendered: data tables read by rst_document.py."""

# Python objects: directive -> what a question calls it.  Methods and attributes are named after their
# class, everything else after its module (builtins are unprefixed, as people write them).
PYTHON_OBJECTS = {
    "function": "function",
    "coroutinefunction": "function",
    "awaitablefunction": "function",
    "decorator": "decorator",
    "class": "class",
    "exception": "exception",
    "data": "data",
    "method": "method",
    "classmethod": "method",
    "staticmethod": "method",
    "abstractmethod": "method",
    "coroutinemethod": "method",
    "awaitablemethod": "method",
    "decoratormethod": "decorator",
    "attribute": "attribute",
    "property": "attribute",
}
CLASS_MEMBERS = frozenset({"method", "attribute", "decorator"})
OTHER_OBJECTS = {
    "c:function": "C function",
    "c:macro": "C macro",
    "c:type": "C type",
    "c:member": "C struct member",
    "c:var": "C variable",
    "c:data": "C variable",
    "c:struct": "C struct",
    "envvar": "environment variable",
    "cmdoption": "command-line option",
    "option": "command-line option",
    "opcode": "bytecode instruction",
    "pdbcommand": "pdb command",
    "describe": "",
    "object": "",
    "2to3fixer": "2to3 fixer",
}
ADMONITIONS = {
    "note": "Note",
    "warning": "Warning",
    "seealso": "See also",
    "tip": "Tip",
    "important": "Important",
    "attention": "Attention",
    "caution": "Caution",
    "hint": "Hint",
    "danger": "Danger",
    "impl-detail": "CPython implementation detail",
}
VERSION_NOTES = {
    "versionadded": "New in version {0}.",
    "versionchanged": "Changed in version {0}.",
    "deprecated": "Deprecated since version {0}.",
    "deprecated-removed": "Deprecated since version {0}, will be removed in version {1}.",
}
CODE_DIRECTIVES = {
    "code-block": None,
    "sourcecode": None,
    "code": None,
    "parsed-literal": "",
    "doctest": "python",
    "testcode": "python",
    "testoutput": "",
}
# Directives whose content a reader never sees as text (indexes, tables of contents, build plumbing,
# grammar productions, tables too wide to read as prose).
SKIPPED_DIRECTIVES = frozenset(
    """
    index toctree moduleauthor sectionauthor testsetup testcleanup literalinclude include raw
    audit-event audit-event-table productionlist image figure tabularcolumns csv-table list-table
    contents program limited-api-list miscnews c:namespace c:namespace-push c:namespace-pop
    """.split()  # noqa: SIM905 (a word table reads better than a list of strings)
)
LANGUAGE_ALIASES = {
    "python3": "python",
    "py": "python",
    "pycon": "python",
    "none": "",
    "text": "",
    "default": "python",
    "shell-session": "shell",
    "sh": "shell",
    "bash": "shell",
}
