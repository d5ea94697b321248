"""README.md and docs/ cannot drift from the code: their Python blocks run, their shell commands name tools,
flags, files and config keys that exist, every page is linked from the README and no link is dead.

A code block preceded by ``<!-- docs-test: skip (reason) -->`` is not run (it downloads or needs COCO);
its commands are still checked."""
import contextlib
import glob
import importlib
import io
import os
import re
import runpy
import shlex
import sys

import pytest
from torch.distributed.run import get_args_parser as torchrun_parser

from ifr.config import ConfigError, RCNNFPNConfig
from ifr.paths import EXPERIMENTS
from ifr.tools.config_reference import config_leaves

from helpers import ROOT

README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
PAGES = [README, os.path.join(ROOT, "BENCHMARKS.md"), *DOCS]
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"<!-- docs-test: skip \((.+)\) -->")
CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(?:\.[A-Z][A-Z0-9_]*)+")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")
# Console scripts -> their modules (setup.py entry_points).
CONSOLE_SCRIPTS = {"pods_train": "ifr.tools.train_net", "pods_test": "ifr.tools.test_net",
                   "pods_demo": "ifr.tools.demo", "pods_analyze": "ifr.tools.analyze_model"}
# Misspelled keys the docs show on purpose, in examples of the error they cause.
MISSPELLED_EXAMPLES = {"MODEL.ROI_MASK_HEAD.F_TOLL", "MODEL.ROI_HEADS.NUM_CLASS"}
# Commands of other programs a docs block may show; they are not run.
OTHER_PROGRAMS = {"cp", "mkdir", "wget", "pip"}


def _rel(path):
    return os.path.relpath(path, ROOT)


def code_blocks(path):
    """(language, code, skip reason or None, first line number) of every fenced block of a page."""
    blocks, lines = [], open(path, encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            skip = SKIP.match(before.strip())
            blocks.append((opening.group(1), "\n".join(lines[i + 1:end]), skip.group(1) if skip else None, i + 1))
            i = end
        i += 1
    return blocks


def _blocks(language):
    return [pytest.param(path, code, skip, id=f"{_rel(path)}:{line}")
            for path in PAGES for lang, code, skip, line in code_blocks(path) if lang in language]


ALL_KEYS = {key for key, _ in config_leaves(RCNNFPNConfig())}
KEY_PREFIXES = {".".join(key.split(".")[:n]) for key in ALL_KEYS for n in range(1, key.count(".") + 1)}


@pytest.mark.parametrize("path, code, skip", _blocks({"python"}))
def test_python_blocks_run(path, code, skip, tmp_path, monkeypatch, datasets_root):
    if skip:
        pytest.skip(skip)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path / "output"))
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"{_rel(path)} code block", "exec"), {"__name__": "__docs__"})


_HELP = {}


def help_text(target, kind):
    """The --help output of a module (``-m``) or script file, run in this process."""
    if (target, kind) not in _HELP:
        out = io.StringIO()
        argv = sys.argv
        sys.argv = [target, "--help"]
        try:
            with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
                if kind == "module":  # every tool has main(argv)
                    importlib.import_module(target).main(["--help"])
                else:  # as `python script.py` does, the script's folder first on the path (sibling imports)
                    sys.path.insert(0, os.path.dirname(target))
                    runpy.run_path(target, run_name="__main__")
        finally:
            sys.argv = argv
            if kind == "file" and sys.path[0] == os.path.dirname(target):
                sys.path.pop(0)
        assert exit_info.value.code in (0, None), f"{target} --help failed"
        _HELP[target, kind] = out.getvalue()
    return _HELP[target, kind]


def shell_commands(code):
    """Each command of a shell block as a token list (continuations joined, comments dropped, split at
    ``&&``), leading VAR=value assignments removed."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            command = tokens[:cut]
            while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):
                command = command[1:]
            if command:
                commands.append(command)
            tokens = tokens[cut + 1:]
    return commands


def check_arguments(tokens, help_output, where):
    """Every --flag appears in the tool's help; KEY VALUE pairs are keys of the config with valid values."""
    for token in tokens:
        flag = token.split("=")[0]
        if flag.startswith("--"):
            assert re.search(re.escape(flag) + r"\b", help_output), f"{where}: {flag} is not an option of the tool"
    pairs = [(key, tokens[i + 1]) for i, key in enumerate(tokens[:-1]) if CONFIG_KEY.fullmatch(key)]
    for key, value in pairs:
        assert key in ALL_KEYS, f"{where}: {key} is not a config key"
        try:
            RCNNFPNConfig().merge_from_list([key, value])
        except ConfigError as e:
            raise AssertionError(f"{where}: {e}") from None


def check_command(tokens, cwd, where):
    """Checks one command of the docs; returns the folder the next command runs in."""
    program, args = tokens[0], tokens[1:]
    if program == "cd":
        cwd = os.path.normpath(os.path.join(cwd, args[0]))
        assert os.path.isdir(cwd), f"{where}: no folder {args[0]}"
    elif program == "." or program in OTHER_PROGRAMS:
        pass
    elif program in ("sh", "bash"):
        # A folder script shown without `cd` runs in an experiment folder: every folder has it.
        homes = [cwd] if os.path.isfile(os.path.join(cwd, args[0])) else list(EXPERIMENTS.values())
        assert all(os.path.isfile(os.path.join(home, args[0])) for home in homes), f"{where}: no script {args[0]}"
        tool = os.path.basename(args[0])[:-3]
        if tool in CONSOLE_SCRIPTS:
            check_arguments(args[1:], help_text(CONSOLE_SCRIPTS[tool], "module"), where)
    elif program == "torchrun":  # torchrun's flags, then the module it runs with that module's flags
        module = args.index("-m")
        check_arguments(args[:module], torchrun_parser().format_help(), where)
        check_arguments(args[module + 2:], help_text(args[module + 1], "module"), where)
    elif program == "sbatch":
        assert os.path.isfile(os.path.join(cwd, args[-1])), f"{where}: no file {args[-1]}"
    elif program in ("python", "python3"):
        if args[0] == "-m":
            check_arguments(args[2:], help_text(args[1], "module"), where)
        else:
            script = os.path.join(cwd, args[0])
            assert os.path.isfile(script), f"{where}: no file {args[0]}"
            check_arguments(args[1:], help_text(script, "file"), where)
    else:
        raise AssertionError(f"{where}: a command the docs test does not know; add it to OTHER_PROGRAMS "
                             f"if it is another program's")
    return cwd


@pytest.mark.parametrize("path, code, skip", _blocks({"bash", "sh"}))
def test_shell_blocks_name_tools_flags_files_and_keys_that_exist(path, code, skip):
    cwd = ROOT
    for tokens in shell_commands(code):
        cwd = check_command(tokens, cwd, f"{_rel(path)}: {' '.join(tokens)}")


# An inline `command` of the text: optional VAR=value assignments and venv activation, then python / sh / bash.
INLINE_COMMAND = re.compile(r"(?:[A-Z_]+=\S+ )*(?:\. \.venv/bin/activate && )?(?:python|sh|bash) \S+.*")


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_inline_commands_name_tools_flags_files_and_keys_that_exist(path):
    """Commands written inline in the text (on one line) are checked like those of the code blocks; a
    folder script runs in an experiment folder, anything else from the checkout's root."""
    for line in open(path, encoding="utf-8"):
        for span in re.findall(r"`([^`]+)`", line):
            if INLINE_COMMAND.fullmatch(span):
                cwd = ROOT
                for tokens in shell_commands(span):
                    cwd = check_command(tokens, cwd, f"{_rel(path)}: `{span}`")


def _slug(heading):
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    return {_slug(line.lstrip("#")) for line in open(path, encoding="utf-8") if line.startswith("#")}


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_no_dead_links(path):
    text = open(path, encoding="utf-8").read()
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"https?://", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        assert os.path.exists(linked), f"{_rel(path)}: link to {target}: no such file"
        if anchor:
            assert anchor in anchors(linked), f"{_rel(path)}: link to {target}: {_rel(linked)} has no such heading"


def test_every_docs_page_is_linked_from_the_readme():
    readme = open(README, encoding="utf-8").read()
    linked = {os.path.normpath(os.path.join(ROOT, m.group(1).partition("#")[0]))
              for m in LINK.finditer(readme) if m.group(1)}
    missing = [_rel(p) for p in DOCS if p not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


def test_the_readme_is_a_front_page():
    with open(README, encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 200


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_config_keys_named_in_the_text_exist(path):
    text = open(path, encoding="utf-8").read()
    spans = [span for line in text.splitlines() for span in re.findall(r"`([^`]+)`", line)]
    unknown = sorted({key for span in spans for key in CONFIG_KEY.findall(span)
                      if key not in ALL_KEYS | KEY_PREFIXES | MISSPELLED_EXAMPLES})
    assert not unknown, f"{_rel(path)} names config keys that do not exist: {unknown}"
